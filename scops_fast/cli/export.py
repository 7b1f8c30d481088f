"""`scops-export` / `python -m scops_fast.cli.export`: the trained part segmenter as ONNX or a
torch.export program (`scops_fast.train.export` says what the file holds)."""

from __future__ import annotations

import argparse
import sys

from scops_fast.train.export import FORMATS, export


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="scops-export",
        description="The part segmenter as ONNX or a torch.export program (runs without "
        "scops_fast).",
    )
    p.add_argument("--checkpoint", required=True, help="a run (folder or checkpoint.pt)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="file to write (.onnx, .pt2)")
    args = p.parse_args(argv)
    try:
        done = export(args.checkpoint, args.format, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"scops-export: error: {exc}", file=sys.stderr)
        return 2
    s = done["size"]
    print(
        f"scops-export: {done['path']} ({args.format}, {done['kind']} checkpoint): images "
        f"(B, 3, {s}, {s}) in [0, 1] -> part probabilities (B, {done['parts'] + 1}, {s}, {s}), "
        "channel 0 the background",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
