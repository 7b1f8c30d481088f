"""SyntheticParts: a procedurally drawn, deformable creature with nine parts and exact labels.

Every image shows one "creature" of the same category: a body, two arms, a head with two ears,
two eyes and a nose. Each part has its own colour pair and texture (stripes, dots, checks, rings),
the same in every image, so appearance says which part a pixel belongs to; position says it too,
because the parts keep their layout. What varies per image:

- pose: rotation, scale and translation of the whole creature;
- articulation: the head tilts about the neck, the ears about their roots, the arms about the
  shoulders;
- a smooth non-rigid deformation: a random displacement field (a coarse Gaussian grid, bicubically
  interpolated) bends the whole image;
- appearance: per-part colour jitter, a global brightness and lighting gradient, pixel noise;
- background clutter: random ellipses and boxes in random, desaturated colours and random stripes
  over a smooth random background, so colour alone does not separate object from clutter and
  clutter does not look like any particular part.

Item i depends only on (seed, i). Rendering is vectorised torch on the CPU, about 5 ms per 64x64
and 10 ms per 128x128 image, on one intra-op thread (see `single_thread`). All geometry is in
"half-side units": the image's shorter side spans [-1, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["SyntheticParts", "PART_NAMES", "LANDMARK_NAMES", "SALIENCY_KINDS"]

PART_NAMES = (
    "left_eye",
    "right_eye",
    "nose",
    "head",
    "left_ear",
    "right_ear",
    "left_arm",
    "right_arm",
    "body",
)
# Landmark l is the centre of part l + 1; the eyes come first so that |lm[0] - lm[1]| is an
# inter-ocular distance, as the face evaluation expects.
LANDMARK_NAMES = PART_NAMES

# Canonical creature, y pointing down; "left" is the image's left in the upright pose.
# Geometry per part: centre (x, y) in its joint's frame, radii (a, b), superellipse exponent
# (2 = ellipse, larger = boxier, smaller = pointier), orientation in degrees.
_HEAD_PIVOT = (0.0, -0.12)
_EAR_PIVOTS = ((-0.3, -0.62), (0.3, -0.62))
_SHOULDERS = ((-0.42, 0.12), (0.42, 0.12))
# fmt: off
_GEOMETRY = {
    "left_eye":  ((-0.19, -0.45), (0.15, 0.13), 2.0, 0.0),
    "right_eye": ((0.19, -0.45),  (0.15, 0.13), 2.0, 0.0),
    "nose":      ((0.0, -0.22),   (0.17, 0.11), 2.0, 0.0),
    "head":      ((0.0, -0.38),   (0.47, 0.43), 2.2, 0.0),
    "left_ear":  ((-0.36, -0.86), (0.13, 0.26), 1.6, -25.0),
    "right_ear": ((0.36, -0.86),  (0.13, 0.26), 1.6, 25.0),
    "left_arm":  ((-0.62, 0.4),   (0.14, 0.36), 2.0, 35.0),
    "right_arm": ((0.62, 0.4),    (0.14, 0.36), 2.0, -35.0),
    "body":      ((0.0, 0.42),    (0.6, 0.52),  2.6, 0.0),
}
# Appearance per part: texture, colour where the pattern is 0, colour where it is 1.
_APPEARANCE = {
    "left_eye":  ("rings",   (0.97, 0.97, 0.95), (0.1, 0.1, 0.5)),
    "right_eye": ("rings",   (0.98, 0.9, 0.45),  (0.05, 0.35, 0.1)),
    "nose":      ("dots",    (0.9, 0.15, 0.25),  (0.45, 0.02, 0.1)),
    "head":      ("stripes", (0.98, 0.66, 0.18), (0.78, 0.38, 0.05)),
    "left_ear":  ("checks",  (0.62, 0.28, 0.82), (0.35, 0.1, 0.5)),
    "right_ear": ("checks",  (0.95, 0.5, 0.75),  (0.7, 0.2, 0.45)),
    "left_arm":  ("stripes", (0.15, 0.5, 0.95),  (0.05, 0.2, 0.55)),
    "right_arm": ("stripes", (0.1, 0.85, 0.75),  (0.0, 0.45, 0.4)),
    "body":      ("dots",    (0.35, 0.75, 0.2),  (0.15, 0.42, 0.05)),
}
# fmt: on
# Painting order, back to front: ears behind the head, arms over the body, face details last.
_DRAW_ORDER = (
    "body",
    "left_arm",
    "right_arm",
    "left_ear",
    "right_ear",
    "head",
    "nose",
    "left_eye",
    "right_eye",
)
_HEAD_GROUP = ("head", "left_eye", "right_eye", "nose", "left_ear", "right_ear")
_SALIENCY_DROPPABLE = tuple(
    PART_NAMES.index(k) for k in ("nose", "left_ear", "right_ear", "left_arm", "right_arm")
)
#: The choices of SyntheticParts's `saliency` argument.
SALIENCY_KINDS = ("degraded", "estimate", "ones")
_TEXTURE_FREQ = {"rings": 9.0, "dots": 4.5, "stripes": 5.0, "checks": 6.0}
_TEXTURE_ANGLE = {"left_arm": 90.0, "right_arm": 90.0, "head": 20.0}


def _rot(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor(
        [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def _shift(x: float, y: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _about(deg: float, pivot) -> torch.Tensor:
    return _shift(*pivot) @ _rot(deg) @ _shift(-pivot[0], -pivot[1])


def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) Gaussian blur along one axis with reflect padding folded in: blurred = M @ x."""
    r = max(1, min(n - 1, int(math.ceil(3 * sigma))))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    for offset, weight in zip(range(-r, r + 1), k.tolist(), strict=True):
        cols = (rows + offset).abs()  # reflect at 0 ...
        cols = torch.where(cols > n - 1, 2 * (n - 1) - cols, cols)  # ... and at n - 1
        m.index_put_((rows, cols), torch.full((n,), weight, dtype=torch.float64), accumulate=True)
    return m.float()


def _superellipse_level(u: torch.Tensor, v: torch.Tensor, e: float) -> torch.Tensor:
    """(|u|^e + |v|^e)^(1/e) for unit radii; the exponents 2 and 8 avoid pow (they are common)."""
    if e == 2.0:
        return torch.sqrt(u * u + v * v)
    if e == 8.0:
        u2, v2 = u * u, v * v
        u2, v2 = u2 * u2, v2 * v2
        return (u2 * u2 + v2 * v2).sqrt().sqrt().sqrt()
    return (u.abs().clamp_min(1e-6) ** e + v.abs().clamp_min(1e-6) ** e) ** (1.0 / e)


def _texture(kind: str, u: torch.Tensor, v: torch.Tensor, freq: float, angle: float):
    """Pattern in [0, 1] from part-local canonical coordinates (moves and bends with the part)."""
    a = math.radians(angle)
    if kind == "stripes":
        t = u * math.cos(a) + v * math.sin(a)
        return 0.5 + 0.5 * torch.sin(2 * math.pi * freq * t)
    if kind == "dots":
        d = torch.cos(2 * math.pi * freq * u) * torch.cos(2 * math.pi * freq * v)
        return torch.sigmoid(8.0 * (d - 0.4))
    if kind == "checks":
        s = torch.sin(2 * math.pi * freq * u) * torch.sin(2 * math.pi * freq * v)
        return torch.sigmoid(10.0 * s)
    if kind == "rings":
        # An eye: a dark pupil inside a light ring.
        r = torch.sqrt(u * u + v * v)
        return torch.sigmoid(40.0 * (0.075 - r))
    raise ValueError(kind)


class SyntheticParts(Dataset):
    """Map-style dataset of procedurally generated part-segmented creatures.

    Args:
        n: number of items.
        size: output size, int (square) or (H, W).
        seed: dataset seed; item i is a pure function of (seed, i).
        rotation: maximum absolute rotation of the creature, degrees (uniform).
        scale: (low, high) uniform range of the creature's scale; at 1 the canonical creature
            (about 2.2 x 1.9 units) spans the image's shorter side.
        translation: maximum absolute shift per axis, in half-side units.
        articulation: multiplier on the joint ranges (head +-15 deg, ears +-20, arms +-30); 0
            makes the creature rigid.
        deformation: standard deviation of the smooth displacement field, half-side units
            (0.05 at 128 px is about 3 px); 0 turns it off.
        deformation_grid: nodes per side of the displacement field's coarse grid (smoothness).
        clutter: (min, max) number of background shapes, inclusive.
        noise: standard deviation of additive pixel noise.
        colour_jitter: standard deviation of the per-image shift of every part colour.
        symmetric_pairs: give the right eye/ear/arm the left one's colours (left/right parts
            then differ only by position, as on a real animal).
        saliency_blur: Gaussian sigma of the saliency's blur, as a fraction of the shorter side.
        saliency: what the item's saliency is: "degraded" (the default, below), "estimate"
            (`scops_fast.data.saliency.estimate_saliency` of the image, what a data set without
            maps gets from `--saliency auto`) or "ones" (no saliency: nothing masked).
        single_thread: render each item with one torch intra-op thread (restoring the count
            afterwards); much faster on a loaded CPU. Turn off only if items are rendered in a
            thread running concurrently with other torch work.

    Item: dict of
        img (3, H, W) float32 in [0, 1];
        parts (H, W) int64, 0 background, 1..9 = PART_NAMES;
        fg (H, W) bool, parts > 0;
        saliency (H, W) float32 in [0, 1], a degraded foreground (blurred, dilated or eroded a few
            pixels, sometimes missing a part, with noise and false blobs), as from a saliency model;
            or the estimate, or ones (see the `saliency` argument);
        landmarks (9, 2) float32 pixel (x, y) (x = column index), the centres of the parts in
            PART_NAMES order: landmarks[0], landmarks[1] are the left and right eyes;
        visible (9,) bool, whether the part is visible (has pixels in the image);
        index int.
    """

    num_parts = len(PART_NAMES)
    part_names = PART_NAMES
    landmark_names = LANDMARK_NAMES

    def __init__(
        self,
        n: int,
        size: int | tuple[int, int] = 128,
        seed: int = 0,
        *,
        rotation: float = 30.0,
        scale: tuple[float, float] = (0.72, 0.92),
        translation: float = 0.1,
        articulation: float = 1.0,
        deformation: float = 0.05,
        deformation_grid: int = 4,
        clutter: tuple[int, int] = (4, 10),
        noise: float = 0.02,
        colour_jitter: float = 0.04,
        symmetric_pairs: bool = False,
        saliency_blur: float = 0.02,
        saliency: str = "degraded",
        single_thread: bool = True,
    ):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 8 or w < 8:
            raise ValueError(f"size must be at least 8 pixels per side, got {(h, w)}")
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        if clutter[0] < 0 or clutter[0] > clutter[1]:
            raise ValueError(f"clutter must be (min, max) with 0 <= min <= max, got {clutter}")
        if saliency not in SALIENCY_KINDS:
            raise ValueError(f"saliency must be one of {SALIENCY_KINDS}, got {saliency!r}")
        if deformation_grid < 2:
            raise ValueError(f"deformation_grid must be >= 2, got {deformation_grid}")
        self.n, self.size, self.seed = n, (h, w), seed
        self.rotation, self.scale, self.translation = rotation, tuple(scale), translation
        self.articulation, self.deformation = articulation, deformation
        self.deformation_grid, self.clutter = deformation_grid, tuple(clutter)
        self.noise, self.colour_jitter, self.saliency_blur = noise, colour_jitter, saliency_blur
        self.symmetric_pairs, self.single_thread = symmetric_pairs, single_thread
        self.saliency = saliency
        self._colours = self._part_colours(symmetric_pairs)
        self._grid = self._pixel_grid(h, w)
        sigma = saliency_blur * min(h, w)
        self._blur = (_blur_matrix(h, sigma), _blur_matrix(w, sigma)) if sigma > 0 else None

    def __len__(self) -> int:
        return self.n

    @staticmethod
    def _part_colours(symmetric: bool) -> torch.Tensor:
        cols = {k: (v[1], v[2]) for k, v in _APPEARANCE.items()}
        if symmetric:
            for right, left in (
                ("right_eye", "left_eye"),
                ("right_ear", "left_ear"),
                ("right_arm", "left_arm"),
            ):
                cols[right] = cols[left]
        return torch.tensor([cols[k] for k in PART_NAMES], dtype=torch.float32)  # (P, 2, 3)

    @staticmethod
    def _pixel_grid(h: int, w: int) -> torch.Tensor:
        """(H, W, 2) pixel centres in half-side units (the shorter side spans [-1, 1])."""
        half = min(h, w) / 2.0
        xs = (torch.arange(w, dtype=torch.float32) + 0.5 - w / 2.0) / half
        ys = (torch.arange(h, dtype=torch.float32) + 0.5 - h / 2.0) / half
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([int(self.seed), int(index)]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))

    def __getitem__(self, index: int) -> dict:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        index = index % self.n if self.n else index
        threads = torch.get_num_threads()
        if not self.single_thread or threads == 1:
            return self.render(index)
        # The tensors are small: on a busy machine, intra-op threads spend far longer waiting on
        # each other than computing (measured: 60-80 ms per 64 px item with 2 threads, 9 ms with
        # 1). Safe because a map-style item is rendered synchronously between training steps.
        torch.set_num_threads(1)
        try:
            return self.render(index)
        finally:
            torch.set_num_threads(threads)

    # ----------------------------------------------------------------------------------------
    def render(self, index: int) -> dict:
        g = self._generator(index)
        h, w = self.size
        half = min(h, w) / 2.0

        def uniform(lo, hi, shape=()):
            return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)

        # Pose and articulation (all float64 3x3 matrices: part frame -> canonical -> image).
        angle = float(uniform(-self.rotation, self.rotation))
        scale = float(uniform(*self.scale))
        tx, ty = (float(v) for v in uniform(-self.translation, self.translation, (2,)))
        art = self.articulation
        head_tilt = float(uniform(-15, 15)) * art
        ear_angles = [float(v) * art for v in uniform(-20, 20, (2,))]
        arm_angles = [float(v) * art for v in uniform(-30, 30, (2,))]
        pose = (
            _shift(tx, ty)
            @ _rot(angle)
            @ torch.diag(torch.tensor([scale, scale, 1.0], dtype=torch.float64))
        )

        head = _about(head_tilt, _HEAD_PIVOT)
        joint = {k: torch.eye(3, dtype=torch.float64) for k in PART_NAMES}
        for k in _HEAD_GROUP:
            joint[k] = head
        joint["left_ear"] = head @ _about(ear_angles[0], _EAR_PIVOTS[0])
        joint["right_ear"] = head @ _about(ear_angles[1], _EAR_PIVOTS[1])
        joint["left_arm"] = _about(arm_angles[0], _SHOULDERS[0])
        joint["right_arm"] = _about(arm_angles[1], _SHOULDERS[1])
        frames = torch.stack(
            [joint[k] @ _shift(*_GEOMETRY[k][0]) @ _rot(_GEOMETRY[k][3]) for k in PART_NAMES]
        )  # (P, 3, 3): part-local -> canonical

        # Smooth displacement field: image point p shows canonical point pose^-1 (p + D(p)).
        field = (
            torch.randn(1, 2, self.deformation_grid, self.deformation_grid, generator=g)
            * self.deformation
        )
        extent = torch.tensor([w / 2.0 / half, h / 2.0 / half])

        def displacement(points: torch.Tensor) -> torch.Tensor:
            """D at (..., 2) points in half-side units, bicubic between the coarse nodes."""
            loc = (points / extent).reshape(1, 1, -1, 2).float()
            d = F.grid_sample(field, loc, mode="bicubic", padding_mode="border", align_corners=True)
            return d[0, :, 0].T.reshape(points.shape)

        pix = self._grid  # (H, W, 2)
        warped = pix + displacement(pix) if self.deformation > 0 else pix
        to_canonical = torch.linalg.inv(pose)
        canon = warped @ to_canonical[:2, :2].T.float() + to_canonical[:2, 2].float()
        to_local = torch.linalg.inv(frames).float()  # (P, 3, 3)
        cx, cy = canon[None, ..., 0], canon[None, ..., 1]
        m = to_local[:, :2, :, None, None]  # (P, 2, 3, 1, 1)
        u = m[:, 0, 0] * cx + m[:, 0, 1] * cy + m[:, 0, 2]
        v = m[:, 1, 0] * cx + m[:, 1, 1] * cy + m[:, 1, 2]

        radii = torch.tensor([_GEOMETRY[k][1] for k in PART_NAMES], dtype=torch.float32)
        a, b = radii[:, 0, None, None], radii[:, 1, None, None]
        un, vn = u / a, v / b
        level = torch.stack(
            [_superellipse_level(un[p], vn[p], _GEOMETRY[k][2]) for p, k in enumerate(PART_NAMES)]
        )
        # Approximate signed distance in pixels, for one-pixel anti-aliased edges.
        dist_px = (level - 1.0) * torch.minimum(a, b) * scale * half
        alpha = (0.5 - dist_px).clamp(0.0, 1.0)  # (P, H, W)

        # Appearance.
        colours = (
            self._colours + torch.randn(self._colours.shape, generator=g) * self.colour_jitter
        ).clamp(0, 1)
        img = self._background(g, h, w, pix)
        labels = torch.zeros(h, w, dtype=torch.long)
        for name in _DRAW_ORDER:
            p = PART_NAMES.index(name)
            kind = _APPEARANCE[name][0]
            pattern = _texture(
                kind, u[p], v[p], _TEXTURE_FREQ[kind], _TEXTURE_ANGLE.get(name, 45.0)
            )
            col = (
                colours[p, 0, :, None, None] * (1 - pattern)
                + colours[p, 1, :, None, None] * pattern
            )
            # Soft shading toward the rim gives each part some volume.
            col = col * (1.0 - 0.25 * level[p].clamp(0, 1) ** 4)
            img = img * (1 - alpha[p]) + col * alpha[p]
            labels[alpha[p] > 0.5] = p + 1

        direction = uniform(0, 2 * math.pi)
        light = 1.0 + 0.15 * (
            pix[..., 0] * torch.cos(direction) + pix[..., 1] * torch.sin(direction)
        )
        img = img * light.float() * float(uniform(0.85, 1.15))
        img = img + torch.randn(img.shape, generator=g) * self.noise
        img = img.clamp(0.0, 1.0)

        fg = labels > 0
        # The degraded map draws from g last among the random draws, so the other kinds leave
        # every other output of the item unchanged.
        if self.saliency == "degraded":
            saliency = self._saliency(g, dist_px, labels, half)
        elif self.saliency == "estimate":
            from .saliency import estimate_saliency

            rgb = (img * 255).round().byte().permute(1, 2, 0).numpy()
            saliency = torch.from_numpy(estimate_saliency(rgb)).float() / 255.0
        else:
            saliency = torch.ones(h, w)
        centres = frames[:, :2, 2]  # part-local origin in canonical units
        landmarks = self._to_pixels(pose, centres, displacement, half, h, w)
        visible = torch.zeros(self.num_parts + 1, dtype=torch.bool)
        visible[labels.unique()] = True
        return {
            "img": img.float(),
            "parts": labels,
            "fg": fg,
            "saliency": saliency,
            "landmarks": landmarks,
            "visible": visible[1:],
            "index": index,
        }

    def _background(self, g: torch.Generator, h: int, w: int, pix: torch.Tensor) -> torch.Tensor:
        """Smooth muted background plus random clutter shapes, (3, H, W)."""
        c0, c1 = 0.25 + 0.5 * torch.rand(2, 3, 1, 1, generator=g)
        t = torch.rand(1, generator=g) * 2 * math.pi
        ramp = 0.5 + 0.35 * (pix[..., 0] * torch.cos(t) + pix[..., 1] * torch.sin(t))
        img = c0 * (1 - ramp) + c1 * ramp
        lo, hi = self.clutter
        count = int(torch.randint(lo, hi + 1, (1,), generator=g)) if hi > 0 else 0
        if count == 0:
            return img
        params = torch.rand(count, 9, generator=g)
        grey = torch.rand(count, 1, generator=g) * 0.6 + 0.2
        # Half-saturated random colours: clutter is colourful but never the parts' saturated hues.
        colour = 0.5 * params[:, 0:3] + 0.5 * grey
        centre = (params[:, 3:5] * 2 - 1) * 1.1
        radii = 0.08 + 0.4 * params[:, 5:7]
        theta = params[:, 7] * math.pi
        boxy = params[:, 8] > 0.5
        half = min(h, w) / 2.0
        for s in range(count):
            c, sn = math.cos(theta[s]), math.sin(theta[s])
            d = pix - centre[s]
            u = d[..., 0] * c + d[..., 1] * sn
            v = -d[..., 0] * sn + d[..., 1] * c
            level = _superellipse_level(u / radii[s, 0], v / radii[s, 1], 8.0 if boxy[s] else 2.0)
            alpha = ((1.0 - level) * radii[s].min() * half + 0.5).clamp(0, 1)
            stripes = 0.85 + 0.15 * torch.sin(2 * math.pi * (3 + 5 * grey[s]) * u)
            img = img * (1 - alpha) + colour[s, :, None, None] * stripes * alpha
        return img

    def _saliency(
        self, g, dist_px: torch.Tensor, labels: torch.Tensor, half: float
    ) -> torch.Tensor:
        """A saliency-model-like estimate of the foreground: right on average, wrong in detail."""
        h, w = labels.shape
        grow = float(torch.rand(1, generator=g)) * 5.0 - 2.0  # dilate up to 3 px, erode up to 2
        d = dist_px.clone()
        if float(torch.rand(1, generator=g)) < 0.2:
            # A thin limb or small part missed; never the body or head, which no model would miss.
            d[
                _SALIENCY_DROPPABLE[
                    int(torch.randint(0, len(_SALIENCY_DROPPABLE), (1,), generator=g))
                ]
            ] = float("inf")
        sal = (d.min(dim=0).values < grow).float()
        if self._blur is not None:
            sal = self._blur[0] @ sal @ self._blur[1].T
        sal = sal * (0.75 + 0.25 * float(torch.rand(1, generator=g)))
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            cy, cx = float(torch.rand(1, generator=g)) * h, float(torch.rand(1, generator=g)) * w
            r = (0.04 + 0.08 * float(torch.rand(1, generator=g))) * min(h, w)
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            sal = torch.maximum(sal, 0.35 * float(torch.rand(1, generator=g)) * blob)
        sal = sal + torch.randn(h, w, generator=g) * 0.04
        return sal.clamp(0.0, 1.0).float()

    def _to_pixels(self, pose, canon_points, displacement, half, h, w) -> torch.Tensor:
        """Canonical points -> pixel (x, y): invert p + D(p) = pose(c) by fixed-point iteration
        (D is smooth and small, so the map p -> target - D(p) is a contraction)."""
        target = (canon_points @ pose[:2, :2].T + pose[:2, 2]).float()
        p = target.clone()
        if self.deformation > 0:
            for _ in range(30):
                nxt = target - displacement(p)
                done = float((nxt - p).abs().max()) < 1e-5
                p = nxt
                if done:
                    break
        x = p[:, 0] * half + w / 2.0 - 0.5
        y = p[:, 1] * half + h / 2.0 - 0.5
        return torch.stack([x, y], dim=-1).float()
