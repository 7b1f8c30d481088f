"""Argument checks the command-line tools share: argparse then names the flag in its error
(`scops-eval: error: argument --batch-size: expected at least 1, got 0`)."""

from __future__ import annotations

import argparse


def at_least(minimum: int, hint: str = ""):
    """An argparse `type`: an integer no smaller than `minimum`; `hint` follows the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected at least {minimum}, got {value}{hint}")
        return value

    return parse


def resolve_device(name: str) -> str:
    """--device: "auto" (CUDA when torch sees a GPU, else cpu), or a torch device name that
    this machine has."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError:
        raise ValueError(f"--device: {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device: {name!r} asked for, but torch sees no CUDA device on this machine; "
            "use --device cpu"
        )
    return name
