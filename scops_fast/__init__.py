"""scops_fast: fast, drop-in SCOPS losses (Hung et al., CVPR 2019) with pluggable backends.

from scops_fast import losses as loss
"""

from scops_fast import _quiet
from scops_fast._dispatch import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
)

__version__ = "0.1.0"

_quiet.install()

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "available_backends",
    "get_backend",
    "set_backend",
]
