"""One message of torch's own that misleads on machines without a GPU.

torch.utils.cpp_extension logs "No CUDA runtime is found, using CUDA_HOME=..." when it is
imported on a machine with a CUDA toolkit but no GPU: Inductor imports it for every
`torch.compile`, so a CPU user of scops_fast would see it on every compiled run although
nothing asked for CUDA. Only that record is dropped, and only while torch sees no GPU;
asking for a CUDA backend on such a machine still raises BackendUnavailableError with the
reason.
"""

from __future__ import annotations

import logging

MESSAGE = "No CUDA runtime is found"


class _NoCudaRuntimeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(MESSAGE):
            return True
        import torch

        return torch.cuda.is_available()


def install() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeFilter) for f in logger.filters):
        logger.addFilter(_NoCudaRuntimeFilter())
