"""metrics.jsonl, the loss curves of a run (one JSON object per logged step): its name and
its reader. Neutral ground: the trainer writes the file (scops_fast.train.progress) and the
pictures read it (scops_fast.viz), and neither package imports the other for it."""

from __future__ import annotations

import json
import math
import pathlib

METRICS_NAME = "metrics.jsonl"


def strict_json(value, **kwargs) -> str:
    """`json.dumps` that every parser reads: a non-finite number (NaN, infinity), which
    Python would write as the bare word NaN or Infinity, is written as null."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl file (a directory: the file inside it)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a crash; what follows it is not trusted
    return records
