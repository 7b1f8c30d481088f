"""Finding pretrained weight files on disk, and reading them safely. Nothing here
downloads: training machines are often offline, and a silent multi-hundred-megabyte
download is a surprise."""

from __future__ import annotations

import os
import pathlib
import pickle
from collections.abc import Sequence

import torch

#: The value of a `pretrained` / `weights` option that means "torchvision's file in the
#: torch hub cache".
HUB_CACHE = "torchvision"


def hub_checkpoint_dir() -> pathlib.Path:
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(
    spec: str | os.PathLike,
    file_names: Sequence[str],
    what: str,
    option: str,
    url_base: str = "https://download.pytorch.org/models/",
) -> pathlib.Path:
    """The weight file named by `spec`: a path, or HUB_CACHE for the first of
    `file_names` present in the torch hub cache. Raises FileNotFoundError saying how
    to provide the file (`url_base`: where it can be downloaded)."""
    if str(spec) == HUB_CACHE:
        folder = hub_checkpoint_dir()
        for name in file_names:
            if (folder / name).is_file():
                return folder / name
        raise FileNotFoundError(
            f"{what} weights: none of {list(file_names)} is in the torch hub cache {folder}. "
            f"Copy the file there (it is never downloaded here; on a machine with network "
            f"access it is at {url_base}{file_names[0]}), or set {option} to the "
            f"path of the .pth file (e.g. --set {option}=/path/{file_names[0]})."
        )
    path = pathlib.Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights: {option} = {str(spec)!r} is not a file. Give the path of "
            f"torchvision's ImageNet state dict ({file_names[0]}), or {HUB_CACHE!r} to use "
            f"the copy in the torch hub cache {hub_checkpoint_dir()}."
        )
    return path


class WeightsFileError(ValueError):
    """A file that torch.load(weights_only=True) refused or could not read."""


def load_tensor_file(path, what: str, map_location="cpu", **kwargs):
    """`torch.load(path, weights_only=True)`: tensors, numbers, strings and containers only.
    A file whose unpickling would build any other object (code to run, say) is refused
    and nothing in it runs; that and an unreadable file (another kind of file, truncated)
    raise WeightsFileError, one line that names `what`. torch's own message advises
    weights_only=False, which would run such code: it is not passed on."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as exc:
        raise WeightsFileError(
            f"{what} {os.fspath(path)!r} was refused: it is not a file of tensors, numbers, "
            f"strings, lists and dicts that torch.save wrote ({unpickler_reason(exc)}); "
            "nothing in it was run"
        ) from None
    except (FileNotFoundError, IsADirectoryError):
        raise
    except PermissionError:
        raise WeightsFileError(f"{what} {os.fspath(path)!r}: permission denied") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt: torch raises many types
        first = str(exc).split(". ")[0].splitlines()[0][:200] if str(exc) else "an empty file?"
        raise WeightsFileError(
            f"{what} {os.fspath(path)!r} is unreadable (truncated or corrupt?): "
            f"{type(exc).__name__}: {first}"
        ) from None


#: Lines of torch's weights-only message that are advice, not the reason.
_ADVICE = (
    "weights_only",
    "Weights only load failed",
    "Check the documentation",
    "Please file an issue",
)


def unpickler_reason(exc: BaseException) -> str:
    """What torch's weights-only unpickler objected to, without its advice (which includes
    loading with weights_only=False)."""
    kept = []
    for line in str(exc).splitlines():
        line = line.split("WeightsUnpickler error:", 1)[-1].strip()
        if line and not any(advice in line for advice in _ADVICE):
            kept.append(line.split(". Please ", 1)[0].rstrip("."))
    return " ".join(" ".join(kept).split())[:160] or type(exc).__name__
