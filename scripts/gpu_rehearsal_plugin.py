"""pytest plugin for `scripts/gpu_check.py --rehearse`: collects the GPU check's test
selection on a machine without a GPU, as a GPU machine would collect it.

Loaded with `-p gpu_rehearsal_plugin` (scripts/ on PYTHONPATH), before any test module is
imported: torch then reports one CUDA device, so tests/backends_under_test.py lists the GPU
pairs and tests/test_backends.py leaves Triton's interpreter off. Only collection is
meaningful under this fake; nothing may run on the faked device.
"""

import os
import sys

import torch

torch.cuda.is_available = lambda: True


def pytest_collection_finish(session):
    module = sys.modules.get("test_backends")
    interpreted = getattr(module, "INTERPRETER_HERE", None)
    print(
        f"\nrehearsal: TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} "
        f"test_backends.INTERPRETER_HERE={interpreted!r}"
    )
