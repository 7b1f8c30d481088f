"""The pure-PyTorch oracle as a backend: runs wherever torch runs, on any inputs. Every
public op has a function of the same name in `scops_fast.reference`."""

from scops_fast import reference as _ref
from scops_fast.backends import table
from scops_fast.ops import NATIVE, compose


def devices():
    return ("cpu", "cuda", "mps", "xpu", "meta")


OPS = table({name: getattr(_ref, name) for name in compose.losses_from(NATIVE)})


def probe():
    return None
