"""One module per backend, each a static declaration that `scops_fast._dispatch` reads:

- `devices()`: the device types it runs on in this process (no side effects);
- `probe()`: None when usable here, else why not (loads its library once; no other
  side effect);
- `OPS`: {public op name: `Op`}, each implementation taking the positional arguments
  `scops_fast.losses` / `scops_fast.tps` pass it, with a `supports(*args)` predicate
  that says, before anything runs, why these particular inputs cannot be taken;
- optionally `describe()`: which build runs, in words;
- optionally `checking_only()`: None when the backend is meant to be used, else why it
  serves only to check kernels (slow; "auto" never picks it; benchmarks time it only
  when it is named). Absent means meant to be used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd import forward_ad


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


def constant_features(*indices: int) -> Callable[..., str | None]:
    """A predicate refusing features (or a saliency) that need a gradient, at argument
    `indices` (a tensor or a list of them): the fused kernels take them as constants (SCOPS's
    frozen VGG features), so they would return none. The original's loss differentiates
    them, as the reference does, and "auto" passes on to it."""

    def supports(*args) -> str | None:
        if not torch.is_grad_enabled():
            return None
        for index in indices:
            value = args[index] if index < len(args) else None
            values = value if isinstance(value, list | tuple) else (value,)
            if any(getattr(v, "requires_grad", False) for v in values):
                return (
                    "features (or saliency) require grad, and its kernels take them as "
                    'constants, as SCOPS\'s frozen features are (backend "reference" '
                    "differentiates them; or pass them detached)"
                )
        return None

    return supports


def reverse_mode_autograd(*args) -> str | None:
    """A predicate refusing calls under forward-mode AD (dual tensors, torch.func.jvp,
    jacfwd) or torch.func's other differentiating transforms (grad, vjp, jacrev, hessian).
    A fused op's backward is an autograd rule registered with torch.library, which
    `backward()` and `torch.autograd.grad` run; forward-mode AD would give it a zero tangent,
    silently, and torch.func.grad raises an error from torch's internals. The reference is
    made of ATen ops, differentiated wherever torch differentiates them (not the warp in
    forward mode: torch's grid_sample has no forward derivative), and "auto" passes on to it."""
    if torch.compiler.is_compiling():
        return None  # Dynamo cannot read functorch's stack; an eager call checks it
    transforms = torch._C._functorch.get_interpreter_stack() or ()
    if any(t.key() in _DIFFERENTIATING for t in transforms):
        return (
            "torch.func's grad/vjp/jvp/jacrev/jacfwd/hessian cannot differentiate its "
            "custom ops, whose backward serves backward() and torch.autograd.grad only "
            '(backend "reference" is plain ATen ops)'
        )
    # No dual level open (-1): no tensor can carry a tangent. 0 if torch renames it: check.
    if getattr(forward_ad, "_current_level", 0) >= 0 and any(
        torch.is_tensor(a) and forward_ad.unpack_dual(a).tangent is not None for a in args
    ):
        return (
            "forward-mode AD (dual tensors) would give its custom ops a zero tangent: their "
            'derivative is reverse-mode only (backend "reference" is plain ATen ops)'
        )
    return None


_DIFFERENTIATING = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


def all_of(*predicates: Callable[..., str | None]) -> Callable[..., str | None]:
    """The first refusal among `predicates` (None when all take the inputs)."""

    def supports(*args) -> str | None:
        return next((r for r in (p(*args) for p in predicates) if r is not None), None)

    return supports


#: What every fused backend (kernels with their own backward) cannot take.
FUSED_SUPPORTS = {
    "tps_warp": constant_source_points(1),
    "equivariance_losses": constant_source_points(2),
    "semantic_consistency_loss": constant_features(0),
    "semantic_consistency_loss_lowres": constant_features(0, 3),
}


def table(implementations: dict, supports: dict | None = None) -> dict:
    """{name: Op} from {name: implementation} and {name: predicate} (default: any)."""
    supports = supports or {}
    return {name: Op(fn, supports.get(name, any_inputs)) for name, fn in implementations.items()}


def fused_table(implementations: dict, supports: dict | None = None) -> dict:
    """`table` for a fused backend: `reverse_mode_autograd` for every op, `FUSED_SUPPORTS`
    and the backend's own `supports`."""
    merged = {name: reverse_mode_autograd for name in implementations}
    for extra in (FUSED_SUPPORTS, supports or {}):
        for name, predicate in extra.items():
            if name in merged:
                merged[name] = all_of(merged[name], predicate)
    return table(implementations, merged)
