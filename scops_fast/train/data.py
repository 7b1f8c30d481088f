"""Data sets by name and the order in which a run visits them.

The order is a pure function of (seed, step): the global batch of step t is a slice
of a seeded permutation of epoch t // steps_per_epoch, and rank r of N takes the r-th
of N equal pieces of it (of each micro-batch, with gradient accumulation). So a resumed
run needs no sampler state, and a distributed run sees exactly the batches of a
single-process run with the same global batch.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib

import torch

from scops_fast.train.config import ConfigError, DataConfig
from scops_fast.train.stopping import ignore_stop_signals

#: Aliases of data sets (constructor path "module:attribute"); any other
#: "module:attribute" string works too.
DATASETS = {
    "synthetic": "scops_fast.data.synthetic:SyntheticParts",
    "celeba": "scops_fast.data.celeba:CelebAWild",
    "cub": "scops_fast.data.cub:CUB",
    "cub-original": "scops_fast.data.cub_original:CUBOriginal",
    "folder": "scops_fast.data.folder:ImageFolder",
}

#: The keys of a data set item the trainer reads.
BATCH_KEYS = ("img", "saliency")
#: The item's own index, where a data set that skips unreadable items
#: (`scops_fast.data.SkippingDataset`) returns another item than the one asked for.
INDEX_KEY = "index"


def resolve_dataset_class(name: str, field: str = "data.dataset"):
    target = DATASETS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep:
        raise ConfigError(
            f"{field}: expected one of {sorted(DATASETS)} or 'package.module:attribute', "
            f"got {name!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{field} {name!r}: cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{field} {name!r}: {module_name} has no {attr!r}") from None


def build_dataset(cfg: DataConfig):
    """The training data set of `cfg` (in a `CachedItems` when `cfg.cache`)."""
    dataset = dataset_from_spec(cfg.dataset, cfg.args, cfg.image_size)
    if len(dataset) == 0 and isinstance(getattr(dataset, "root", None), pathlib.Path):
        from scops_fast.data.imagefiles import IMAGE_EXTENSIONS

        raise ConfigError(
            f"data: no images found under {dataset.root} (searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)})"
        )
    return CachedItems(dataset) if cfg.cache else dataset


class CachedItems(torch.utils.data.Dataset):
    """The trainer's keys (`BATCH_KEYS`) of each item, kept after its first read, so
    every epoch after the first costs nothing to load. The values are the same
    tensors, so a run trains bit for bit as without the cache. Other keys are
    dropped: use the wrapped data set (`.dataset`) for them. With worker processes
    (data.num_workers > 0) each worker keeps its own copy."""

    def __init__(self, dataset):
        self.dataset = dataset
        self._items: dict[int, dict] = {}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        item = self._items.get(index)
        if item is None:
            full = self.dataset[index]
            keys = (*BATCH_KEYS, INDEX_KEY)
            item = {k: torch.as_tensor(full[k]) for k in keys if k in full}
            self._items[index] = item
        return item


def dataset_from_spec(name: str, args: dict, image_size: int, prefix: str = "data."):
    """Data set `name` built with `args`; `size=image_size` is added when the
    constructor takes a size and `args` does not give one. Errors name the config fields
    `{prefix}dataset` and `{prefix}args`."""
    factory = resolve_dataset_class(name, f"{prefix}dataset")
    kwargs = dict(args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "size" in params and "size" not in kwargs:
        kwargs["size"] = image_size
    what_set = f"data set {name!r}" if prefix == "data." else f"{prefix}dataset {name!r}"
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{prefix}args do not fit {name!r}: {exc}") from None
    except ValueError as exc:  # an argument the data set refuses, in its own words
        raise ConfigError(f"{what_set}: {exc}") from None
    except FileNotFoundError as exc:
        raise ConfigError(f"{what_set}: {missing_file(factory, exc)}") from None


def missing_file(factory, exc: FileNotFoundError) -> str:
    """What a data set's constructor did not find, with the files it expects under its root."""
    layout = expected_layout(factory)
    hint = f"; expected under the root: {layout}" if layout else ""
    # A message that already says what is wrong (no file name) is kept as it is.
    return (f"{exc.filename} is missing" if exc.filename else str(exc)) + hint


def expected_layout(factory) -> str:
    """The files a data set expects, from the "Expected layout" block of its module's
    docstring (the names of its indented lines), comma-separated; "" when it has none."""
    doc = inspect.getmodule(factory).__doc__ or ""
    lines = doc.split("Expected layout", 1)[1].splitlines()[1:] if "Expected layout" in doc else []
    names = []
    for line in lines:
        if not line.strip():
            if names:
                break
            continue
        first = line.split()[0].rstrip(",")
        if line.startswith("    ") and ("/" in first or "." in first):
            names.append(first)
    return ", ".join(names)


class GlobalBatchOrder:
    """Indices of the batch that `rank` of `world_size` trains on at a given step.

    With `accumulate` micro-batches per step, step t takes accumulate x global_batch
    images, the batch of step t of a run with that global batch, so the two runs see
    the same images in the same steps; micro-batch a is its a-th piece of global_batch,
    which the ranks split as they split an unaccumulated batch."""

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accumulate: int = 1,
    ):
        if global_batch % world_size:
            raise ConfigError(
                f"data.batch_size: the global batch {global_batch} does not split evenly over "
                f"{world_size} processes"
            )
        step_images = global_batch * accumulate
        if n == 0:
            raise ConfigError(
                "data: the data set holds no images (for a folder: no image files were found "
                "under its root)"
            )
        if n < step_images:
            what = "data.batch_size" if accumulate == 1 else "data.batch_size x data.accumulate"
            fit = max(world_size, n // accumulate // world_size * world_size)
            raise ConfigError(
                f"{what}: {step_images} is larger than the data set ({n} images); lower it, "
                f"e.g. --set data.batch_size={fit}"
            )
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.accumulate = rank, world_size, accumulate
        self.step_images = step_images
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = n // step_images
        self._epoch, self._perm = None, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def global_indices(self, step: int) -> list[int]:
        """The images of step `step` on all ranks, micro-batch after micro-batch."""
        epoch, j = divmod(step, self.steps_per_epoch)
        return self._permutation(epoch)[j * self.step_images : (j + 1) * self.step_images].tolist()

    def micro_slice(self, micro: int) -> slice:
        """This rank's part of micro-batch `micro`, as positions in `global_indices`."""
        start = micro * self.global_batch + self.rank * self.local_batch
        return slice(start, start + self.local_batch)

    def local_slice(self) -> slice:
        return self.micro_slice(0)

    def local_positions(self) -> list[int]:
        """Positions in `global_indices` of this rank's images of a step, micro-batch
        after micro-batch: its micro-batch a is the a-th run of local_batch of them."""
        return [
            p for a in range(self.accumulate) for p in range(self.step_images)[self.micro_slice(a)]
        ]

    def indices(self, step: int) -> list[int]:
        images = self.global_indices(step)
        return [images[p] for p in self.local_positions()]

    def state(self, step: int) -> dict:
        epoch, j = divmod(step, self.steps_per_epoch)
        return {
            "seed": self.seed,
            "epoch": epoch,
            "batch_in_epoch": j,
            "global_batch": self.global_batch,
            "accumulate": self.accumulate,
        }


class _StepBatches(torch.utils.data.Sampler):
    def __init__(self, order: GlobalBatchOrder, start: int, stop: int):
        self.order, self.start, self.stop = order, start, stop

    def __iter__(self):
        return (self.order.indices(t) for t in range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def collate(items: list[dict]) -> dict:
    """Stacks the keys the trainer needs; other keys (landmarks of varying count,
    part labels) are not batched."""
    batch = {}
    for key in BATCH_KEYS:
        if key in items[0]:
            batch[key] = torch.stack([torch.as_tensor(item[key]) for item in items])
    if "img" not in batch:
        raise KeyError("data set items must have an 'img' entry (3, H, W) in [0, 1]")
    if all(INDEX_KEY in item for item in items):
        batch[INDEX_KEY] = torch.as_tensor([int(item[INDEX_KEY]) for item in items])
    return batch


def _wrapped(dataset):
    """`dataset`, then the data set it wraps (its `.dataset`, e.g. `CachedItems`), and so on."""
    seen = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        yield dataset
        dataset = getattr(dataset, "dataset", None)


def skipped_indices(dataset) -> set[int]:
    """Indices a skipping data set (or one it wraps, e.g. `CachedItems`) found
    unreadable in this process (with worker processes, each worker has its own count)."""
    return {int(i) for d in _wrapped(dataset) for i in getattr(d, "bad_indices", ())}


def mark_unreadable(dataset, indices) -> None:
    """Tells a skipping data set (or one it wraps) that `indices` are unreadable, as found in
    other processes (the readers): it passes over them without naming them again."""
    for d in _wrapped(dataset):
        if isinstance(getattr(d, "bad_indices", None), set):
            d.bad_indices.update(int(i) for i in indices)
            d.skipped = len(d.bad_indices)


def describe_items(dataset, indices) -> list[str]:
    """What a skipping data set (or one it wraps) calls each of `indices`: its file path."""
    for d in _wrapped(dataset):
        describe = getattr(d, "_describe", None)
        if callable(describe):
            return [describe(int(i)) for i in indices]
    return [f"item {int(i)}" for i in indices]


def substituted(requested: list[int], batch: dict) -> set[int]:
    """The requested indices a skipping data set replaced by another item."""
    returned = batch.get(INDEX_KEY)
    if returned is None:
        return set()
    return {r for r, got in zip(requested, returned.tolist(), strict=False) if r != got}


def batches(
    dataset,
    order: GlobalBatchOrder,
    start: int,
    stop: int,
    num_workers: int = 0,
    pin_memory: bool = False,
):
    """Iterator over the batches of steps start..stop-1 (in page-locked memory with
    `pin_memory`, for copies to a GPU that do not wait for the CPU)."""
    return iter(
        torch.utils.data.DataLoader(
            dataset,
            batch_sampler=_StepBatches(order, start, stop),
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            # The readers ignore Ctrl-C and SIGTERM: the trainer stops after its step, then
            # closes the loader (scops_fast.train.stopping).
            worker_init_fn=ignore_stop_signals if num_workers else None,
            # Worker seeds from (seed, start), not from the global RNG, so that a random
            # transform inside the data set repeats on resume.
            generator=torch.Generator().manual_seed(order.seed * 7919 + start),
        )
    )
