"""Backend selection: which implementation of an op runs for a given call.

A backend is a module under `scops_fast.backends` that declares what it runs (see that
package's docstring): the device types, a probe, and per op an implementation with a
`supports(*args)` predicate. Adding a backend means writing that module and naming it in
`BACKEND_MODULES`; no public function changes.

Precedence for a call: the explicit `backend=` argument, then `set_backend()`, then the
`SCOPS_FAST_BACKEND` environment variable, then "auto". "auto" asks each candidate of
`AUTO_ORDER` for the tensors' device in turn whether it can take *these* inputs and runs
the first that can; `explain` says which runs and why the others were passed over. A backend named
explicitly that cannot take the inputs raises `BackendUnavailableError` with the reason,
before any kernel runs.
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
    # The CUDA kernels emulated on the CPU, for tests: never in AUTO_ORDER.
    "cuda_emu": "scops_fast.backends.cuda_emu",
}
BACKENDS = tuple(BACKEND_MODULES)
CHOICES = ("auto", *BACKENDS)

# The order "auto" tries for the tensors' device type; "reference" runs anywhere. GPU
# backends are never tried for CPU tensors.
# The CUDA order is NOT MEASURED: no GPU has run these kernels yet. It follows the designs
# (the CUDA pixel kernels keep the K + 1 softmax in registers where Triton reloads the
# logits per part; the dense loss is cuBLAS GEMMs). `make gpu-check` times both
# (benchmarks/gpu_bench.py) and this line should follow its result.
AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}
AUTO_FALLBACK = ("reference",)


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here, or not these inputs."""


@dataclass(frozen=True)
class _Loaded:
    module: object | None
    reason: str | None


class _Registry:
    """The backends loaded so far, one attribute each (name -> `_Loaded`).

    Attributes, not a dict: torch.compile copies a dict at the first read in a trace and
    would miss a backend loaded later in the same trace (an "auto" call passing one
    backend over for the next), while it reads an object's attributes when asked."""


_loaded = _Registry()
_process_default: str | None = None


def _ensure_loaded(name: str) -> bool:
    """Imports and probes backend `name` once."""
    if not hasattr(_loaded, name):
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
        except Exception as exc:  # a broken optional backend must not break the package
            loaded = _Loaded(None, f"import failed: {type(exc).__name__}: {exc}")
        else:
            loaded = _Loaded(module, module.probe())
        setattr(_loaded, name, loaded)
    return True


# torch.compile calls this while it traces instead of tracing it (the import machinery
# cannot be traced), so a compiled call works as the first thing a process does. This
# is the mark torch.compiler.assume_constant_result sets; set here directly because
# that function imports torch._dynamo, a second's import for every user of scops_fast.
_ensure_loaded._dynamo_marked_constant = True


def _load(name: str) -> _Loaded:
    _ensure_loaded(name)
    return getattr(_loaded, name)


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
    devices = loaded.module.devices()
    if device_type is not None and device_type not in devices:
        return f"it runs on {'/'.join(devices)} tensors, not {device_type}"
    if op is not None and op not in loaded.module.OPS:
        return f"it does not implement {op}"
    return None


def _refusal(name: str, op: str, device_type: str, args) -> str | None:
    """Why backend `name` cannot run `op` on these inputs (None: it can)."""
    reason = unavailable_reason(name, op, device_type)
    if reason is None and args is not None:
        reason = _load(name).module.OPS[op].supports(*args)
    return reason


def _choice(op: str, backend: str | None, device_type: str, args) -> tuple[str, dict]:
    """(the backend that runs, {backend "auto" passed over: why})."""
    name = get_backend() if backend is None else check_name(backend)
    if name != "auto":
        reason = _refusal(name, op, device_type, args)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {name!r} cannot run {op} on these {device_type} tensors: {reason}"
            )
        return name, {}
    passed = {}
    for candidate in AUTO_ORDER.get(device_type, AUTO_FALLBACK):
        reason = _refusal(candidate, op, device_type, args)
        if reason is None:
            return candidate, passed
        passed[candidate] = reason
    details = "; ".join(f"{n}: {r}" for n, r in passed.items())
    raise BackendUnavailableError(f"no backend can run {op} on {device_type} tensors ({details})")


def choose(op: str, backend: str | None, device_type: str, args=None) -> str:
    """The name of the backend that a call of `op` with `backend=` on `device_type` runs;
    `args`: the implementation's arguments, for the backends' input predicates (None:
    judge by device only)."""
    return _choice(op, backend, device_type, args)[0]


def select(op: str, backend: str | None, device_type: str, args=None):
    """The implementation of `op` that a call with `backend=` and these `args` runs."""
    return _load(choose(op, backend, device_type, args)).module.OPS[op].run


def explain(op: str, device_type: str, args=None, backend: str | None = None) -> dict:
    """{"backend": what runs, "passed_over": {name: why}} for a call of `op` with these
    arguments, without running it."""
    picked, passed = _choice(op, backend, device_type, args)
    return {"backend": picked, "passed_over": passed}


class BackendReport(dict):
    """{name: devices it runs on} for the usable backends, with `.unavailable`
    {name: reason} for the others, `.details` {name: which build runs} where a backend
    says, and `.checking_only` {name: why} for the usable backends that serve only to check
    kernels (their module's `checking_only()`). `in` and iteration see only usable ones."""

    def __init__(
        self,
        usable: dict,
        unavailable: dict,
        details: dict | None = None,
        checking_only: dict | None = None,
    ):
        super().__init__(usable)
        self.unavailable = dict(unavailable)
        self.details = dict(details or {})
        self.checking_only = dict(checking_only or {})

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
    usable, unavailable, details, checking = {}, {}, {}, {}
    for name in BACKENDS:
        reason = unavailable_reason(name)
        if reason is None:
            module = _load(name).module
            usable[name] = tuple(module.devices())
            described = getattr(module, "describe", lambda: None)()
            if described:
                details[name] = described
            why = getattr(module, "checking_only", lambda: None)()
            if why:
                checking[name] = why
        else:
            unavailable[name] = reason
    return BackendReport(usable, unavailable, details, checking)
