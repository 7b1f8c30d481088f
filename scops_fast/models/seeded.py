"""Seeded pseudo-random weights that any implementation can rebuild bit for bit.

Cross-checks against another implementation (the original SCOPS network, say) need the
same weights on both sides without shipping a 100 MB file. `torch.randn` is not fit for
that: its vectorised paths may round differently from one CPU to another. Here every
tensor comes from numpy's PCG64 generator (`numpy.random.default_rng`), whose doubles
are the same on every platform, seeded from the run's seed and the tensor's name, and is
rounded once to float32.

The procedure, by the tensor's name and shape (names as in the state dict being built):
- `...running_var`: uniform in [0.5, 1.5); `...running_mean`: uniform in [-0.1, 0.1);
  `...num_batches_tracked`: 0;
- other 1-d tensors: uniform in [0.05, 0.25) if the name ends in `weight` (a norm's scale:
  small, so that a deep residual network's activations stay bounded in eval mode), else
  uniform in [-0.1, 0.1) (shifts and biases);
- tensors of 2 and more dimensions: He-uniform, uniform in [-b, b) with
  b = sqrt(6 / fan_in), fan_in = the product of all dimensions but the first.
The generator of a tensor is `default_rng([seed, crc32(name)])`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import numpy as np


def seeded_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The float32 array of one named tensor (see the module docstring)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    shape = tuple(int(s) for s in shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf == "running_var":
        values = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 1 and leaf == "weight":
        values = rng.uniform(0.05, 0.25, shape)
    elif len(shape) <= 1:
        values = rng.uniform(-0.1, 0.1, shape)
    else:
        bound = math.sqrt(6.0 / max(1, math.prod(shape[1:])))
        values = rng.uniform(-bound, bound, shape)
    return values.astype(np.float32)


def seeded_state_dict(shapes: Iterable[tuple[str, tuple[int, ...]]], seed: int) -> dict:
    """{name: float32 array} for (name, shape) pairs, e.g. a state dict's items."""
    return {name: seeded_tensor(name, tuple(shape), seed) for name, shape in shapes}


__all__ = ["seeded_state_dict", "seeded_tensor"]
