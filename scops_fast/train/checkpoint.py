"""Checkpoint files: written atomically, so a crash mid-write leaves the previous
checkpoint intact."""

from __future__ import annotations

import os
import pathlib
import pickle

import torch
from torch.torch_version import TorchVersion

from scops_fast.models.weights import unpickler_reason

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (truncated, corrupt, or not ours)."""


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save to `path.tmp`, fsync, then rename over `path`. A write that fails
    leaves `path` as it was and removes the partial `path.tmp`; a process killed
    mid-write leaves at most a partial `path.tmp`, which nothing reads and the next
    save replaces."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is.
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A training checkpoint of ours, read with `weights_only=True`: tensors, numbers,
    strings, lists and dicts only. A file whose unpickling would build any other object
    (code to run, say) is refused with a CheckpointError and nothing in it runs."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        # Checkpoints written before 2026-11-30 store torch.__version__ as a TorchVersion,
        # a str subclass: harmless, so allowed.
        with torch.serialization.safe_globals([TorchVersion]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unpickler_reason(exc)
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it holds objects other than tensors, numbers, "
            f"strings, lists and dicts, and unpickling them could run code ({reason}). Nothing in "
            "it was run. If you wrote it yourself and trust it, load it with torch.load(path, "
            "weights_only=False) and save the parts you need again."
        ) from None
    except Exception as exc:  # truncated or corrupt: torch and pickle raise many types
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable (truncated or corrupt?): "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a scops_fast training checkpoint")
    return ckpt
