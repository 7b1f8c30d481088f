"""Finding pretrained weight files on disk. Nothing here downloads: training machines
are often offline, and a silent multi-hundred-megabyte download is a surprise."""

from __future__ import annotations

import os
import pathlib
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
