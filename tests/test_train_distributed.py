"""DistributedDataParallel on the CPU (gloo): two processes of a tiny run hold the
same parameters after every step, and with BatchNorm on running statistics they
match a single-process run with the same global batch."""

import pytest
import torch
import torch.distributed as dist
from train_helpers import free_port, join_local_group, spawn_ranks, tiny_config

from scops_fast.train import Trainer, distributed
from scops_fast.train.config import config_from_dict
from scops_fast.train.data import batches

STEPS = 3
WORLD = 2


def _parameters(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.objective.parameters()])


def _run_steps(trainer):
    """Parameters after each step."""
    cfg = trainer.cfg
    trainer.module.train()
    history = []
    for batch in batches(trainer.dataset, trainer.order, 0, cfg.steps):
        trainer.train_step(batch)
        history.append(_parameters(trainer))
    return history


def _worker(rank, port, config, out_dir, result_path):
    join_local_group(rank, port, WORLD)
    trainer = Trainer(config_from_dict(config), out_dir, progress=False, tensorboard=False)
    assert trainer.proc.world_size == WORLD and trainer.order.local_batch == 2
    spread = []
    for params in _run_steps(trainer):
        gathered = [torch.empty_like(params) for _ in range(WORLD)]
        dist.all_gather(gathered, params)
        spread.append(max(float((g - gathered[0]).abs().max()) for g in gathered))
    if rank == 0:
        torch.save({"spread": spread, "params": params}, result_path)
    distributed.teardown()


@pytest.mark.rounding
def test_ddp_ranks_agree_and_match_one_process(tmp_path):
    """Noise model: DDP averages two ranks' gradients where one process averages one batch
    of 4, so the sums round in another order; BatchNorm uses running statistics, so nothing
    amplifies that. Moving every initial weight by one float32 ulp moves the parameters
    after the 3 steps by at most 2.4e-7, 0.8 % of the tolerance (1e-6 + 1e-4 relative),
    while training moves them by 0.63."""
    cfg = tiny_config(steps=STEPS, **{"data.batch_size": 4, "model.batchnorm": "eval"})
    result = tmp_path / "ddp.pt"
    spawn_ranks(
        _worker,
        (free_port(), cfg.to_dict(), str(tmp_path / "ddp"), str(result)),
        nprocs=WORLD,
    )
    ddp = torch.load(result)
    assert ddp["spread"] == [0.0] * STEPS  # identical on both ranks after every step

    single = Trainer(cfg, tmp_path / "single", progress=False, tensorboard=False)
    history = _run_steps(single)
    torch.testing.assert_close(ddp["params"], history[-1], rtol=1e-4, atol=1e-6)
    # and the run really moved away from the initial weights
    initial = _parameters(Trainer(cfg, tmp_path / "init", progress=False, tensorboard=False))
    assert (history[-1] - initial).abs().max() > 1e-3


def _rank_builds_a_folder_with_auto_saliency(rank, port, root, out, counts):
    join_local_group(rank, port, WORLD)
    cfg = tiny_config(
        **{"data.dataset": "folder", "data.args": {"root": root, "saliency_dir": "auto"}}
    )
    trainer = Trainer(cfg, out, progress=False, tensorboard=False)
    counts[rank] = {k: trainer.dataset.saliency_counts[k] for k in ("written", "reused")}
    distributed.teardown()


def test_the_first_rank_of_a_machine_estimates_the_saliency_maps_the_others_reuse(tmp_path):
    """--saliency auto under torchrun: one process estimates every map, not each of them."""
    import numpy as np
    import torch.multiprocessing as mp
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = (rng.random((30, 26, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"p{i}.png")
    with mp.get_context("spawn").Manager() as manager:
        counts = manager.dict()
        args = (free_port(), str(root), str(tmp_path / "run"), counts)
        spawn_ranks(_rank_builds_a_folder_with_auto_saliency, args, nprocs=WORLD)
        assert dict(counts) == {0: {"written": 6, "reused": 0}, 1: {"written": 0, "reused": 6}}
