"""One module per backend, each a static declaration that `scops_fast._dispatch` reads:

- `devices()`: the device types it runs on in this process (no side effects);
- `probe()`: None when usable here, else why not (loads its library once; no other
  side effect);
- `OPS`: {public op name: `Op`}, each implementation taking the positional arguments
  `scops_fast.losses` / `scops_fast.tps` pass it, with a `supports(*args)` predicate
  that says, before anything runs, why these particular inputs cannot be taken;
- optionally `describe()`: which build runs, in words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def any_inputs(*args) -> None:
    return None


@dataclass(frozen=True)
class Op:
    run: Callable
    #: (*args) -> None when these inputs can be taken, else the reason they cannot.
    supports: Callable[..., str | None] = any_inputs


def channels_at_most(limit: int, index: int, what: str) -> Callable[..., str | None]:
    """A predicate refusing inputs whose argument `index` has more than `limit` channels
    (dim 1); `what` names the argument in the reason."""

    def supports(*args) -> str | None:
        channels = args[index].shape[1]
        if channels > limit:
            return f"its kernels hold at most {limit} channels of {what}, got {channels}"
        return None

    return supports


def constant_source_points(index: int) -> Callable[..., str | None]:
    """A predicate refusing source points (argument `index`) that need a gradient: the fused
    kernels take the spline as a constant (SCOPS draws it at random), so they would return
    none. The reference differentiates through the spline, and "auto" passes on to it."""

    def supports(*args) -> str | None:
        if torch.is_grad_enabled() and getattr(args[index], "requires_grad", False):
            return (
                "source_points requires grad, and its kernels treat the spline as a constant "
                '(backend "reference" differentiates through it; or pass source_points.detach())'
            )
        return None

    return supports


def all_of(*predicates: Callable[..., str | None]) -> Callable[..., str | None]:
    """The first refusal among `predicates` (None when all take the inputs)."""

    def supports(*args) -> str | None:
        return next((r for r in (p(*args) for p in predicates) if r is not None), None)

    return supports


#: What every fused backend (kernels with their own backward) cannot take.
FUSED_SUPPORTS = {
    "tps_warp": constant_source_points(1),
    "equivariance_losses": constant_source_points(2),
}


def table(implementations: dict, supports: dict | None = None) -> dict:
    """{name: Op} from {name: implementation} and {name: predicate} (default: any)."""
    supports = supports or {}
    return {name: Op(fn, supports.get(name, any_inputs)) for name, fn in implementations.items()}


def fused_table(implementations: dict, supports: dict | None = None) -> dict:
    """`table` for a fused backend: `FUSED_SUPPORTS` and the backend's own `supports`."""
    merged = dict(FUSED_SUPPORTS)
    for name, predicate in (supports or {}).items():
        merged[name] = all_of(merged[name], predicate) if name in merged else predicate
    return table(implementations, merged)
