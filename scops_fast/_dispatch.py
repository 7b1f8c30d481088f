"""Backend selection: which implementation of an op runs for a given call.

A backend is a module under `scops_fast.backends` that exposes
- `DEVICES`: the device types it runs on,
- `probe()`: None when usable in this process, else the reason it is not,
- `OPS`: {op name: implementation}, each taking the reference's positional arguments.

Adding a backend means writing that module and naming it in `BACKEND_MODULES`;
no public function changes. Precedence for a call: the explicit `backend=`
argument, then `set_backend()`, then the `SCOPS_FAST_BACKEND` environment
variable, then "auto".
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

ENV_VAR = "SCOPS_FAST_BACKEND"

BACKEND_MODULES = {
    "reference": "scops_fast.backends.reference",
    "cpp": "scops_fast.backends.cpp",
    "triton": "scops_fast.backends.triton",
    "cuda": "scops_fast.backends.cuda",
}
BACKENDS = tuple(BACKEND_MODULES)
CHOICES = ("auto", *BACKENDS)

# "auto" tries these in order for the tensors' device type; "reference" runs anywhere.
# GPU backends are never tried for CPU tensors.
AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}
AUTO_FALLBACK = ("reference",)

# On CUDA tensors, per op, which GPU backend "auto" tries first, and why. Not yet
# measured on a GPU (no GPU has run these kernels): the order follows the designs.
AUTO_CUDA_PREFERENCE = {
    # Pixel-parallel kernels with block-tree reductions: the CUDA kernels keep the
    # K+1 softmax in registers, Triton reloads logits per part.
    "concentration_loss": ("cuda", "triton"),
    "batch_get_centers": ("cuda", "triton"),
    # Both scatter their adjoint in int64 fixed point; the CUDA kernels sample all
    # channels from one computed position.
    "tps_warp": ("cuda", "triton"),
    "equivariance_losses": ("cuda", "triton"),
    "semantic_consistency_loss_lowres": ("cuda", "triton"),
    # The CUDA dense loss is chunked cuBLAS GEMMs, which beat a hand-written tile.
    "semantic_consistency_loss": ("cuda", "triton"),
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


@dataclass(frozen=True)
class _Loaded:
    module: object | None
    reason: str | None


_loaded: dict[str, _Loaded] = {}
_process_default: str | None = None


def _ensure_loaded(name: str) -> bool:
    """Imports and probes backend `name` once."""
    if name not in _loaded:
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
        except Exception as exc:  # a broken optional backend must not break the package
            _loaded[name] = _Loaded(None, f"import failed: {type(exc).__name__}: {exc}")
        else:
            _loaded[name] = _Loaded(module, module.probe())
    return True


# torch.compile calls this while it traces instead of tracing it (the import machinery
# cannot be traced), so a compiled call works as the first thing a process does. This
# is the mark torch.compiler.assume_constant_result sets; set here directly because
# that function imports torch._dynamo, a second's import for every user of scops_fast.
_ensure_loaded._dynamo_marked_constant = True


def _load(name: str) -> _Loaded:
    _ensure_loaded(name)
    return _loaded[name]


def check_name(name, *, argument: str = "backend") -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{argument}: expected one of {list(CHOICES)} or None, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend; None goes back to the environment / "auto"."""
    global _process_default
    _process_default = None if name is None else check_name(name)


def get_backend() -> str:
    """The backend a call with `backend=None` uses."""
    if _process_default is not None:
        return _process_default
    env = os.environ.get(ENV_VAR)
    if env:
        return check_name(env, argument=f"environment variable {ENV_VAR}")
    return "auto"


def unavailable_reason(name: str, op: str | None = None, device_type: str | None = None):
    """None when backend `name` can run `op` on `device_type`, else why not."""
    loaded = _load(name)
    if loaded.module is None or loaded.reason is not None:
        return loaded.reason
    if device_type is not None and device_type not in loaded.module.DEVICES:
        return f"it runs on {'/'.join(loaded.module.DEVICES)} tensors, not {device_type}"
    if op is not None and op not in loaded.module.OPS:
        return f"it does not implement {op}"
    return None


def choose(op: str, backend: str | None, device_type: str) -> str:
    """The name of the backend that a call of `op` with `backend=` on `device_type` runs."""
    name = get_backend() if backend is None else check_name(backend)
    if name == "auto":
        order = AUTO_ORDER.get(device_type, AUTO_FALLBACK)
        if device_type == "cuda":
            order = (*AUTO_CUDA_PREFERENCE.get(op, ()), *order)
        for candidate in order:
            if unavailable_reason(candidate, op, device_type) is None:
                return candidate
        raise BackendUnavailableError(f"no backend can run {op} on {device_type} tensors")
    reason = unavailable_reason(name, op, device_type)
    if reason is not None:
        raise BackendUnavailableError(
            f"backend {name!r} is not available for {op} on {device_type} tensors: {reason}"
        )
    return name


def resolve(op: str, backend: str | None, device_type: str):
    """The implementation of `op` that a call with `backend=` on `device_type` runs."""
    return _load(choose(op, backend, device_type)).module.OPS[op]


class BackendReport(dict):
    """{name: devices it runs on} for the usable backends, with `.unavailable`
    {name: reason} for the others and `.details` {name: which build runs} where a backend
    says. `in` and iteration see only usable ones."""

    def __init__(self, usable: dict, unavailable: dict, details: dict | None = None):
        super().__init__(usable)
        self.unavailable = dict(unavailable)
        self.details = dict(details or {})

    def __str__(self) -> str:
        lines = [
            f"{name:10s} usable on {', '.join(devs)}"
            + (f" ({self.details[name]})" if name in self.details else "")
            for name, devs in self.items()
        ]
        lines += [f"{name:10s} unavailable: {why}" for name, why in self.unavailable.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"BackendReport(usable={dict(self)!r}, unavailable={self.unavailable!r})"


def available_backends() -> BackendReport:
    """What is usable in this process and, for every backend that is not, why."""
    usable, unavailable, details = {}, {}, {}
    for name in BACKENDS:
        reason = unavailable_reason(name)
        if reason is None:
            module = _load(name).module
            usable[name] = tuple(module.DEVICES)
            described = getattr(module, "describe", lambda: None)()
            if described:
                details[name] = described
        else:
            unavailable[name] = reason
    return BackendReport(usable, unavailable, details)
