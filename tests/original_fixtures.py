"""Fixtures computed by the original SCOPS code (tests/fixtures/original/, made by
scripts/make_original_fixtures.py from a checkout of it): inputs, how the original drew
its random numbers, and what it computed."""

from __future__ import annotations

import functools
import json
import pathlib

import numpy as np
import torch

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "original"


class Section:
    """One fixture file: `section["case.key"]` as a torch tensor (numpy arrays of
    strings stay numpy), `section.json("case.key")` for the JSON-encoded entries."""

    def __init__(self, name: str):
        self.name = name
        with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
            self.arrays = dict(data)

    def __getitem__(self, key: str):
        value = self.arrays[key]
        if value.dtype.kind in "US":
            return value
        return torch.from_numpy(np.array(value))

    def json(self, key: str):
        return json.loads(str(self.arrays[key]))

    def cases(self) -> list[str]:
        return sorted({k.split(".", 1)[0] for k in self.arrays if "." in k})


@functools.cache
def load(name: str) -> Section:
    return Section(name)
