"""Gradient accumulation (`data.accumulate`): an optimiser step over accumulated
micro-batches is the step over their one large batch, in float64 up to its rounding
(both concentration reductions), with BatchNorm on running statistics; with batch
statistics it is not, and the trainer says so. The data, the warps and jitter, the step
counter, the learning rate and the log follow optimiser steps, resume stays bitwise, and
under DDP only the last micro-batch's backward all-reduces."""

import warnings

import pytest
import torch
import torch.distributed as dist
from train_helpers import (
    assert_bitwise_equal,
    float64,
    free_port,
    join_local_group,
    spawn_ranks,
    state_tensors,
    tiny_config,
)

from scops_fast.train import Trainer, distributed
from scops_fast.train.config import ConfigError, config_from_dict, parse_override
from scops_fast.train.data import GlobalBatchOrder, batches
from scops_fast.train.progress import read_metrics
from scops_fast.train.trainer import poly_lr

#: How far float64 runs may differ, relative to each tensor's largest entry (weights,
#: buffers, basis, momenta). The accumulated gradients are the large batch's summed in
#: another order (two partial sums of 2 images, not one of 4), so they differ by rounding:
#: measured here at most 9e-16 after two steps (a few ulps), and 4e-16 in the logged losses.
#: 1e-12 leaves a factor 1000 for other CPUs' summation orders; a step that misses the
#: 1/accumulate scale or trains on other images is off by about 1 relative
#: (test_the_comparison_can_fail).
TOL = 1e-12

#: Deterministic float64 runs on running-statistics BatchNorm, gradients unclipped (a
#: clipped gradient would hide a wrong scale of the losses), so with a learning rate at
#: which two unclipped steps still lower the loss.
EXACT = {
    "threads": 1,
    "model.batchnorm": "eval",
    "log_every": 1,
    "checkpoint_every": 100,
    "optim.lr": 1e-3,
    "optim.grad_clip": None,
    "optim.basis_grad_clip": None,
}


def run(tmp_path, name, steps=2, **overrides):
    """A float64 run of `steps` optimiser steps: (trainer, metrics records)."""
    with float64(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the batch-statistics warning, where asked for
        trainer = Trainer(
            tiny_config(steps=steps, **overrides),
            tmp_path / name,
            progress=False,
            tensorboard=False,
        )
        assert trainer.objective.basis.dtype == torch.float64
        trainer.train()
    return trainer, read_metrics(tmp_path / name)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: rounding relative to the tensor's scale."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def differences(a, b) -> dict[str, float]:
    sa, sb = state_tensors(a), state_tensors(b)
    assert sa.keys() == sb.keys()
    return {k: relative_difference(sa[k], sb[k]) for k in sa}


def assert_close_states(a, b):
    far = {k: d for k, d in differences(a, b).items() if d > TOL}
    assert not far, far


def max_difference(a, b) -> float:
    return max(differences(a, b).values())


LARGE = {"data.batch_size": 4}
ACCUMULATED = {"data.batch_size": 2, "data.accumulate": 2}


@pytest.mark.parametrize(
    "settings",
    [
        {"loss.concentration_reduction": "per_image"},
        {"loss.concentration_reduction": "original"},
        # Clipped once, on the accumulated gradient (clipped per micro-batch, it would not be
        # the large batch's step): tight limits, so that both clips act.
        {"optim.grad_clip": 0.5, "optim.basis_grad_clip": 0.05},
    ],
    ids=["per_image", "original", "clipped"],
)
def test_accumulated_steps_equal_the_large_batch(tmp_path, settings):
    common = {**EXACT, **settings}
    large, large_log = run(tmp_path, "large", **common, **LARGE)
    accumulated, acc_log = run(tmp_path, "acc", **common, **ACCUMULATED)
    assert accumulated.step == large.step == 2
    assert_close_states(accumulated, large)
    # The log: the same steps, losses (means over the micro-batches) and learning rates.
    assert [r["step"] for r in acc_log] == [r["step"] for r in large_log] == [1, 2]
    for a, b in zip(acc_log, large_log, strict=True):
        for key in ("loss", "concentration", "equivariance", "semantic", "orthonormal", "lr"):
            assert a[key] == pytest.approx(b[key], rel=TOL, abs=0.0), key


def test_the_comparison_can_fail(tmp_path):
    """What the tolerance must tell apart from rounding: the large batch's step against
    the step on its first half alone, and against the accumulated step with the micro-
    batches' losses summed instead of averaged (every loss weight doubled)."""
    large, _ = run(tmp_path, "large", **EXACT, **LARGE)
    half, _ = run(tmp_path, "half", **EXACT, **{"data.batch_size": 2})
    weights = ("concentration", "equivariance", "landmark_equivariance", "semantic", "orthonormal")
    doubled = {f"loss.{w}": 2 * getattr(large.cfg.loss, w) for w in weights}
    summed, _ = run(tmp_path, "summed", **EXACT, **ACCUMULATED, **doubled)
    assert max_difference(large, half) > 0.1
    assert max_difference(large, summed) > 0.1


def test_batch_statistics_batchnorm_warns_and_differs(tmp_path):
    settings = {**EXACT, "model.batchnorm": "train"}
    with pytest.warns(UserWarning, match=r"data.accumulate = 2 with model.batchnorm = 'train'"):
        Trainer(
            tiny_config(**settings, **ACCUMULATED),
            tmp_path / "w",
            progress=False,
            tensorboard=False,
        )
    large, _ = run(tmp_path, "large", steps=1, **settings, **LARGE)
    accumulated, _ = run(tmp_path, "acc", steps=1, **settings, **ACCUMULATED)
    # Statistics over 2 images instead of 4: far beyond rounding.
    assert max_difference(large, accumulated) > 1e3 * TOL


def test_steps_take_accumulate_x_batch_images_and_count_optimiser_steps(tmp_path):
    cfg = tiny_config(steps=3, log_every=1, **{"model.batchnorm": "eval", **ACCUMULATED})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, tensorboard=False)
    seen, micro_sizes, optimiser_steps = [], [], []
    train_step, compute_losses = trainer.train_step, trainer.compute_losses

    def spy_step(batch, **replay):
        seen.append(len(batch["img"]))
        return train_step(batch, **replay)

    def spy_losses(batch, **replay):
        micro_sizes.append(len(batch["img"]))
        return compute_losses(batch, **replay)

    step = trainer.net_optimizer.step
    trainer.train_step, trainer.compute_losses = spy_step, spy_losses
    trainer.net_optimizer.step = lambda *a, **k: (optimiser_steps.append(1), step(*a, **k))[1]
    trainer.train()
    assert trainer.step == 3 and len(optimiser_steps) == 3
    assert seen == [4, 4, 4] and micro_sizes == [2] * 6
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["lr"] for r in records] == [poly_lr(0.01, t, 3, 0.9) for t in range(3)]
    # Two steps of 4 make an epoch of 8; the third starts the next permutation.
    large = GlobalBatchOrder(8, 4, seed=cfg.seed)
    assert [trainer.order.indices(t) for t in range(3)] == [large.indices(t) for t in range(3)]
    assert sorted(trainer.order.indices(0) + trainer.order.indices(1)) == list(range(8))


def test_resume_with_accumulation_is_bitwise_identical(tmp_path):
    overrides = {"steps": 4, "checkpoint_every": 2, "data.accumulate": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight = Trainer(tiny_config(**overrides), tmp_path / "a", progress=False)
        straight.train()
        first = Trainer(tiny_config(**overrides), tmp_path / "b", progress=False)
        first.train(until=2)
        del first
        second = Trainer(tiny_config(**overrides), tmp_path / "b", resume=True, progress=False)
        assert second.step == 2
        second.train()
    assert_bitwise_equal(state_tensors(straight), state_tensors(second))
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["rng"]["data_order"]["accumulate"] == 2


def test_order_of_accumulated_steps():
    whole = GlobalBatchOrder(12, 6, seed=3)
    acc = GlobalBatchOrder(12, 2, seed=3, accumulate=3)
    ranks = [GlobalBatchOrder(12, 2, seed=3, rank=r, world_size=2, accumulate=3) for r in (0, 1)]
    assert acc.steps_per_epoch == whole.steps_per_epoch == 2
    for step in range(5):
        images = whole.indices(step)
        assert acc.indices(step) == images
        # Rank r takes the r-th image of each micro-batch of 2.
        assert ranks[0].indices(step) == images[0::2] and ranks[1].indices(step) == images[1::2]
    assert ranks[1].micro_slice(2) == slice(5, 6)
    with pytest.raises(ConfigError, match=r"data.batch_size x data.accumulate: 12 is larger"):
        GlobalBatchOrder(10, 4, seed=0, accumulate=3)


def test_the_field():
    assert tiny_config().data.accumulate == 1
    key, value = parse_override("data.accumulate=4")
    assert tiny_config(**{key: value}).data.accumulate == 4
    with pytest.raises(ConfigError, match="data.accumulate: expected at least 1"):
        tiny_config(**{"data.accumulate": 0})
    with pytest.raises(ConfigError, match="data.accumulate: expected an int"):
        tiny_config(**{"data.accumulate": 1.5})


# --------------------------------------------------------------------------- DDP
WORLD = 2


def _ddp_worker(rank, port, configs, out_dir, result_path):
    join_local_group(rank, port, WORLD)
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    result = {}
    for name, config in configs.items():
        calls = []

        def counting_hook(state, bucket, calls=calls):
            calls.append(1)
            return default_hooks.allreduce_hook(None, bucket)

        with float64(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = Trainer(
                config_from_dict(config), f"{out_dir}/{name}", progress=False, tensorboard=False
            )
            trainer.module.register_comm_hook(None, counting_hook)
            trainer.module.train()
            step = next(batches(trainer.dataset, trainer.order, 0, 1))
            trainer.train_step(step)
        params = torch.cat([p.detach().reshape(-1) for p in trainer.objective.parameters()])
        gathered = [torch.empty_like(params) for _ in range(WORLD)]
        dist.all_gather(gathered, params)
        result[name] = {"params": params, "calls": len(calls), "same": gathered[0].equal(params)}
    if rank == 0:
        torch.save(result, result_path)
    distributed.teardown()


@pytest.mark.rounding
def test_ddp_accumulates_without_syncing_and_matches_one_process(tmp_path):
    """Two ranks, micro-batches of 2 (1 per rank), 2 of them: the parameters of the one
    process with a batch of 4, up to float64 rounding; and as many all-reduces per step as
    without accumulation (no_sync on all micro-batches but the last)."""
    common = {**EXACT, "steps": 1}
    configs = {
        "plain": tiny_config(**common, **{"data.batch_size": 2}).to_dict(),
        "acc": tiny_config(**common, **ACCUMULATED).to_dict(),
    }
    result = tmp_path / "ddp.pt"
    spawn_ranks(
        _ddp_worker,
        (free_port(), configs, str(tmp_path / "ddp"), str(result)),
        nprocs=WORLD,
    )
    ddp = torch.load(result)
    assert ddp["acc"]["same"] and ddp["plain"]["same"]
    assert ddp["acc"]["calls"] == ddp["plain"]["calls"] >= 1
    one, _ = run(tmp_path, "one", steps=1, **EXACT, **LARGE)
    params = torch.cat([p.detach().reshape(-1) for p in one.objective.parameters()])
    assert relative_difference(ddp["acc"]["params"], params) < TOL
