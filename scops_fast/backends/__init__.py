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


def table(implementations: dict, supports: dict | None = None) -> dict:
    """{name: Op} from {name: implementation} and {name: predicate} (default: any)."""
    supports = supports or {}
    return {name: Op(fn, supports.get(name, any_inputs)) for name, fn in implementations.items()}
