"""One float rounding step, applied on purpose: the noise model of the tests marked
`rounding` (see docs/verification.md, "`make test` on another CPU").

Another CPU (its BLAS, oneDNN, vector width, thread count) changes a float32 computation
by rounding differences: every intermediate moves by about one unit in the last place. The
tests marked `rounding` take their tolerances from what moving the *inputs* (and weights)
by one ulp does to the result, measured by `scripts/measure_rounding.py`, not from one
machine's thread spread. With SCOPS_FAST_TEST_ULP_NUDGE=1 (`make test-rounding`, run A)
the tests that take the `nudge` fixture really move their inputs, and must still pass.
"""

from __future__ import annotations

import os

import torch

ENV = "SCOPS_FAST_TEST_ULP_NUDGE"


def enabled() -> bool:
    return os.environ.get(ENV, "0") not in ("", "0")


def nudge(t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """`t` with every floating element moved by one ulp of its dtype, up or down at random
    (seeded): what a rounding difference upstream does to it. Others are returned as is."""
    if not (torch.is_tensor(t) and t.is_floating_point()):
        return t
    g = torch.Generator().manual_seed(seed)
    up = torch.rand(t.shape, generator=g) < 0.5
    inf = torch.tensor(float("inf"), dtype=t.dtype)
    return torch.where(up.to(t.device), t.nextafter(inf), t.nextafter(-inf))


@torch.no_grad()
def nudge_module(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating parameter and buffer of `module` moved by one ulp, in place."""
    for i, t in enumerate([*module.parameters(), *module.buffers()]):
        t.copy_(nudge(t, seed + i))
    return module


class Nudge:
    """The `nudge` fixture: identity unless SCOPS_FAST_TEST_ULP_NUDGE is set."""

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, t, seed: int = 0):
        return nudge(t, seed) if self.on else t

    def module(self, module, seed: int = 0):
        return nudge_module(module, seed) if self.on else module
