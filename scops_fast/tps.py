"""Thin-plate-spline warps (SPEC section 6): the fixed 5x5 target grid, the sampling
grid of a spline, the warp itself and the random warp generator of SCOPS."""

from __future__ import annotations

import math

import torch

from scops_fast import _validate as check
from scops_fast import reference as _ref
from scops_fast._dispatch import select

#: The 25 target control points (x, y) of the 5x5 grid over [-1, 1]^2, x the slow index.
TARGET_POINTS = _ref.target_points(dtype=torch.float32)

MODES = ("affine", "projective")

# Ranges of the random similarity (SPEC section 6), in degrees and normalised units.
MAX_ANGLE_DEG = 60.0
MAX_TILT_DEG = 10.0  # rotations about x and y in projective mode
MAX_TRANSLATION = 0.1


GRID_SOLVES = ("float64", "float32")


def tps_grid(source_points, height, width, *, solve="float64"):
    """Sampling grid (B, H, W, 2) that maps output pixels to input positions, as
    `F.grid_sample(align_corners=True)` expects, for source points (B, 25, 2).

    solve: "float64" (accurate) or "float32": solved and evaluated in float32 as the
    original's TPS does, off by about 6e-6 (for reproducing its numbers)."""
    check.source_points("source_points", source_points)
    height, width = check.size("height", height), check.size("width", width)
    if solve == "float32":
        return _ref.tps_grid_float32_solve(source_points, height, width)
    if solve != "float64":
        raise ValueError(f"solve: expected one of {list(GRID_SOLVES)}, got {solve!r}")
    return _ref.tps_grid(source_points, height, width)


def tps_warp(x, source_points, *, padding_mode="zeros", backend=None):
    """Warp x (B, C, H, W) by the spline of `source_points` (B, 25, 2): bilinear,
    align_corners=True, `zeros` or `border` padding. Output has x's shape."""
    check.tensor("x", x, 4, "(B, C, H, W)")
    check.source_points("source_points", source_points, x.shape[0])
    check.padding_mode(padding_mode)
    check.same_device(x=x, source_points=source_points)
    args = (x, source_points, padding_mode)
    return select("tps_warp", backend, x.device.type, args)(*args)


def _uniform(generator, low, high, *shape):
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _rotation(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Batch of 3x3 rotations (B, 3, 3) about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3, dtype=angle.dtype)
    i, j = [a for a in range(3) if a != axis]
    rot[:, axis, axis] = 1.0
    rot[:, i, i] = c
    rot[:, j, j] = c
    # Right-handed: about y the sine signs flip relative to x and z.
    sign = -1.0 if axis == 1 else 1.0
    rot[:, i, j] = -s * sign
    rot[:, j, i] = s * sign
    return rot


def _check_scale_range(random_scale) -> tuple[float, float]:
    expected = "random_scale: expected None or (low, high) with 0 < low <= high"
    if isinstance(random_scale, (str, bytes)) or not hasattr(random_scale, "__len__"):
        raise TypeError(f"{expected}, got {type(random_scale).__name__}")
    if len(random_scale) != 2:
        raise ValueError(f"{expected}, got {len(random_scale)} values: {random_scale!r}")
    low, high = (check.number(f"random_scale[{i}]", v) for i, v in enumerate(random_scale))
    if not 0 < low <= high:
        raise ValueError(f"{expected}, got {random_scale!r}")
    return low, high


def source_points_from_draws(
    mode: str,
    perturbation: torch.Tensor,
    angle: torch.Tensor,
    scale: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    tilt: torch.Tensor | None = None,
    mirror: bool = False,
) -> torch.Tensor:
    """RandTPS's source points (B, 25, 2) from its random draws (SPEC section 6), in the
    draws' dtype: `perturbation` (B, 25, 2) added to the target grid, in-plane `angle`
    (B,) in radians, `scale` (B,) the inverted random scale, and `shift` (B, 2) in affine
    mode or `tilt` (B, 2) (radians about x, then y) in projective mode; `mirror` negates
    every x after the transform. Split from the drawing so that draws recorded elsewhere
    (the original's, say) give the same points."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    b = perturbation.shape[0]
    points = _ref.target_points(dtype=perturbation.dtype).expand(b, -1, -1) + perturbation
    homogeneous = torch.cat((points, torch.ones_like(points[..., :1])), -1)
    if mode == "affine":
        if shift is None:
            raise ValueError("shift: required in affine mode")
        cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
        affine = torch.stack(
            (
                torch.stack((cos, -sin, shift[:, 0]), -1),
                torch.stack((sin, cos, shift[:, 1]), -1),
            ),
            dim=1,
        )  # (B, 2, 3)
        points = homogeneous @ affine.transpose(1, 2)
    else:
        if tilt is None:
            raise ValueError("tilt: required in projective mode")
        rz = _rotation(2, angle)
        rz[:, :2, :2] *= scale[:, None, None]  # the scale multiplies the in-plane rotation
        # Column vectors: p' = Rx Ry Rz_s p (the z rotation acts first).
        matrix = _rotation(0, tilt[:, 0]) @ _rotation(1, tilt[:, 1]) @ rz
        projected = homogeneous @ matrix.transpose(1, 2)
        points = projected[..., :2] / projected[..., 2:]
    if mirror:
        points = points * torch.tensor([-1.0, 1.0], dtype=points.dtype)
    return points


class RandTPS(torch.nn.Module):
    """Random thin-plate-spline warp of a batch, as used for the equivariance losses.

    Same constructor as the original, plus `generator` (a CPU `torch.Generator`) for
    repeatable draws. `reset_control_points()` draws new source points; `forward(x)`
    warps x with them. Move the module with `.to(device)` to keep the points beside x.
    """

    def __init__(
        self,
        width,
        height,
        batch_size=16,
        sigma=0.01,
        border_padding=False,
        random_mirror=True,
        random_scale=(0.7, 1.1),
        mode="affine",
        generator=None,
    ):
        super().__init__()
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        if random_scale is not None:
            random_scale = _check_scale_range(random_scale)
        if generator is not None and not (
            isinstance(generator, torch.Generator) and generator.device.type == "cpu"
        ):
            got = (
                f"a {generator.device} generator"
                if isinstance(generator, torch.Generator)
                else (type(generator).__name__)
            )
            raise TypeError(f"generator: expected a CPU torch.Generator or None, got {got}")
        self.width = check.size("width", width)
        self.height = check.size("height", height)
        self.batch_size = check.size("batch_size", batch_size)
        self.sigma = check.number("sigma", sigma, minimum=0.0)
        self.border_padding = bool(border_padding)
        self.random_mirror = bool(random_mirror)
        self.random_scale = None if random_scale is None else tuple(random_scale)
        self.mode = mode
        self.generator = generator
        self.register_buffer("target_control_points", TARGET_POINTS.clone())
        self.register_buffer(
            "source_control_points", TARGET_POINTS.expand(self.batch_size, -1, -1).clone()
        )
        self._grid = None
        self.reset_control_points()

    def _draw_scale(self) -> torch.Tensor:
        if self.random_scale is None:
            return torch.ones(self.batch_size, dtype=torch.float64)
        low, high = self.random_scale
        # Inverse range: the spline maps target to source, so a source shrunk by s
        # enlarges the image by 1/s.
        return _uniform(self.generator, 1.0 / high, 1.0 / low, self.batch_size)

    def reset_control_points(self) -> None:
        """Draw new source control points (SPEC section 6)."""
        g, b = self.generator, self.batch_size
        perturbation = _uniform(g, -self.sigma, self.sigma, b, _ref.N_CONTROL, 2)
        deg = math.pi / 180.0
        angle = _uniform(g, -MAX_ANGLE_DEG * deg, MAX_ANGLE_DEG * deg, b)
        scale = self._draw_scale()
        if self.mode == "affine":
            shift, tilt = _uniform(g, -MAX_TRANSLATION, MAX_TRANSLATION, b, 2), None
        else:
            tilt_x = _uniform(g, -MAX_TILT_DEG * deg, MAX_TILT_DEG * deg, b)
            tilt_y = _uniform(g, -MAX_TILT_DEG * deg, MAX_TILT_DEG * deg, b)
            shift, tilt = None, torch.stack((tilt_x, tilt_y), -1)
        mirror = self.random_mirror and bool(torch.rand(1, generator=g) < 0.5)
        points = source_points_from_draws(
            self.mode, perturbation, angle, scale, shift=shift, tilt=tilt, mirror=mirror
        )
        self.source_control_points.copy_(points.to(self.source_control_points.dtype))
        self._grid = None

    @property
    def grid(self) -> torch.Tensor:
        """Sampling grid (B, H, W, 2) of the current source points."""
        if self._grid is None or self._grid.device != self.source_control_points.device:
            self._grid = _ref.tps_grid(self.source_control_points, self.height, self.width)
        return self._grid

    def forward(self, x, padding_mode=None):
        """Warp x (B, C, H, W) with the current source points; padding defaults to
        `border` when the module was built with `border_padding=True`, else `zeros`."""
        if padding_mode is None:
            padding_mode = "border" if self.border_padding else "zeros"
        check.tensor("x", x, 4, "(B, C, H, W)")
        check.matching("x", x, 0, self.batch_size, "batch size", "RandTPS's batch_size")
        return tps_warp(x, self.source_control_points.to(x.device), padding_mode=padding_mode)


__all__ = [
    "GRID_SOLVES",
    "MODES",
    "TARGET_POINTS",
    "RandTPS",
    "source_points_from_draws",
    "tps_grid",
    "tps_warp",
]
