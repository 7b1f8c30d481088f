"""`compile` and `channels_last` (top-level config fields): the network compiled in place
and in channels-last memory order trains as the plain one, up to rounding, with the same
checkpoint."""

import pytest
import torch
from train_helpers import float64, state_tensors, tiny_config

from scops_fast.train import Trainer
from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.config import ConfigError
from scops_fast.train.trainer import network_option

#: float64, one thread: only the order of float64 additions may differ (Inductor fuses and
#: reorders them; channels-last convolutions sum in another order): rounding of about 1e-16
#: per operation, far below this. A wrong layout or a skipped op is off by order 1.
TOL = 1e-9


def run(tmp_path, name, **overrides):
    with float64():
        cfg = tiny_config(steps=2, threads=1, checkpoint_every=100, **overrides)
        trainer = Trainer(cfg, tmp_path / name, progress=False, tensorboard=False)
        trainer.train()
    return trainer


def assert_close(a, b):
    sa, sb = state_tensors(a), state_tensors(b)
    assert sa.keys() == sb.keys()
    far = {k: float((sa[k] - sb[k]).abs().max() / sb[k].abs().max().clamp_min(1e-300)) for k in sa}
    assert max(far.values()) < TOL, far


def test_channels_last_trains_as_the_plain_network(tmp_path):
    plain = run(tmp_path, "plain")
    nhwc = run(tmp_path, "nhwc", channels_last=True)
    weight = next(p for p in nhwc.net.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert_close(nhwc, plain)


def test_compile_trains_as_the_plain_network_and_keeps_its_checkpoint(tmp_path):
    plain = run(tmp_path, "plain")
    compiled = run(tmp_path, "compiled", compile=True)
    assert compiled.net._compiled_call_impl is not None
    assert_close(compiled, plain)
    keys = set(load_checkpoint(tmp_path / "compiled")["model"])
    assert keys == set(load_checkpoint(tmp_path / "plain")["model"])


def test_the_fields_and_their_defaults():
    assert tiny_config().compile is None and tiny_config().channels_last is None
    assert network_option(None, "cpu") is False and network_option(True, "cpu") is True
    assert network_option(False, "cuda") is False
    with pytest.raises(ConfigError, match="compile: expected true or false"):
        tiny_config(compile="yes")
