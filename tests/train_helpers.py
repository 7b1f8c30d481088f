"""Shared set-up of the training tests: a tiny config on the in-test data set."""

from __future__ import annotations

from scops_fast.train.config import Config


def tiny_config(**overrides) -> Config:
    """Small network (width 4), K=3, 32x32 images, batch 2, low-level features."""
    base = {
        "name": "tiny",
        "steps": 6,
        "log_every": 2,
        "checkpoint_every": 3,
        "report": False,
        "device": "cpu",
        "model.arch": "small",
        "model.num_parts": 3,
        "model.width": 4,
        "data.dataset": "train_fakes:TinyParts",
        "data.args": {"n": 8},
        "data.image_size": 32,
        "data.batch_size": 2,
        "features.kind": "lowlevel",
        "features.weights": None,
        "features.stride": 4,
        "optim.lr": 0.01,
    }
    base.update(overrides)
    return Config().replace(base)


def state_tensors(trainer) -> dict:
    """Every tensor that must match between two runs: weights, basis, momenta."""
    out = {f"model.{k}": v for k, v in trainer.net.state_dict().items()}
    out["basis"] = trainer.objective.basis.detach()
    for name, opt in (("net", trainer.net_optimizer), ("basis", trainer.basis_optimizer)):
        for i, state in opt.state_dict()["state"].items():
            out[f"{name}.momentum.{i}"] = state["momentum_buffer"]
    return out


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].equal(b[k]))]
    assert not different, f"differ: {different[:5]}"
