"""Argument checks shared by every public function, so every backend rejects the
same input with the same error. Messages name the argument, what was expected and
what was received."""

from __future__ import annotations

import math
import numbers
import operator

import torch

from scops_fast.reference import N_CONTROL, PADDING_MODES


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def tensor(name: str, t, ndim: int, layout: str) -> torch.Tensor:
    """A floating tensor of `ndim` dimensions with no empty dimension."""
    if not torch.is_tensor(t):
        raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    if t.layout != torch.strided or t.is_nested:
        got = "a nested tensor" if t.is_nested else f"layout {t.layout}"
        raise TypeError(f"{name}: expected a dense (strided) tensor {layout}, got {got}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor {layout}, got {t.dim()}-D of shape {_shape(t)}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor {layout}, got shape {_shape(t)}")
    return t


def logits(name: str, pred) -> torch.Tensor:
    tensor(name, pred, 4, "(B, K+1, H, W)")
    if pred.shape[1] < 2:
        raise ValueError(
            f"{name}: expected at least 2 channels (background + K >= 1 parts) in (B, K+1, H, W), "
            f"got shape {_shape(pred)}"
        )
    return pred


def same_device(**tensors) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on {first.device} like {first_name}, got {t.device}"
            )


def matching(name: str, t: torch.Tensor, dim: int, expected: int, what: str, source: str):
    if t.shape[dim] != expected:
        raise ValueError(
            f"{name}: expected {what} {expected} (from {source}), got {t.shape[dim]} "
            f"in shape {_shape(t)}"
        )


def spatial_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Batch and (H, W) of `t` (..., H, W) must equal those of `ref` (B, ., H, W)."""
    matching(name, t, 0, ref.shape[0], "batch size", ref_name)
    if tuple(t.shape[-2:]) != tuple(ref.shape[-2:]):
        raise ValueError(
            f"{name}: expected spatial size (H, W) = {tuple(ref.shape[-2:])} (from {ref_name}), "
            f"got {tuple(t.shape[-2:])} in shape {_shape(t)}"
        )


def source_points(name: str, points, batch: int | None = None) -> torch.Tensor:
    tensor(name, points, 3, f"(B, {N_CONTROL}, 2)")
    if tuple(points.shape[1:]) != (N_CONTROL, 2):
        raise ValueError(f"{name}: expected shape (B, {N_CONTROL}, 2), got {_shape(points)}")
    if batch is not None and points.shape[0] != batch:
        raise ValueError(
            f"{name}: expected batch size {batch} (from the warped tensor), got {points.shape[0]}"
        )
    return points


def padding_mode(mode) -> str:
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {list(PADDING_MODES)}, got {mode!r}")
    return mode


def size(name: str, value) -> int:
    """A positive integer: Python, NumPy or 0-D integer tensor, not bool."""
    if isinstance(value, bool) or (torch.is_tensor(value) and value.dtype == torch.bool):
        raise TypeError(f"{name}: expected an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None
    if value < 1:
        raise ValueError(f"{name}: expected a positive size, got {value}")
    return value


def feature_list(name: str, features) -> list:
    """One (B, C, h, w) tensor or a non-empty list/tuple of them."""
    if torch.is_tensor(features):
        maps = [features]
    elif isinstance(features, (list, tuple)):
        maps = list(features)
        if not maps:
            raise ValueError(f"{name}: expected a tensor or a non-empty list of tensors, got []")
    else:
        got = type(features).__name__
        raise TypeError(f"{name}: expected a (B, C, h, w) tensor or a list of them, got {got}")
    for i, f in enumerate(maps):
        tensor(
            name if len(maps) == 1 and torch.is_tensor(features) else f"{name}[{i}]",
            f,
            4,
            "(B, C, h, w)",
        )
    return maps


def number(name: str, value, *, minimum: float | None = None) -> float:
    """A finite real number (not bool), at least `minimum` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        scalar = torch.is_tensor(value) and value.numel() == 1 and value.device.type != "meta"
        if not (scalar and value.is_floating_point()):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected a number >= {minimum}, got {value}")
    return value
