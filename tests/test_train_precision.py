"""Mixed precision (`precision`): the segmentation network and the feature extractor run
under autocast, the losses see float32, and the weights, part basis, optimiser state and
checkpoints stay float32; a bfloat16 step is a float32 step up to bfloat16's rounding; the
float16 loss scale is checkpointed and resumed bit for bit.

On a CPU without native bfloat16/float16 convolutions (this one: AVX2) the trainer warns
that they are slow; the warning is expected here and filtered."""

import warnings

import pytest
import torch
from train_helpers import assert_bitwise_equal, checkpoint_tensors, state_tensors, tiny_config

from scops_fast import losses
from scops_fast.train import Trainer
from scops_fast.train.checkpoint import load_checkpoint
from scops_fast.train.config import ConfigError

#: A tiny run with the VGG extractor (random weights, up to relu4_2), so that both
#: autocast regions have convolutions in them.
VGG = {"features.kind": "random_vgg19", "features.layers": ["relu4_2"]}


pytestmark = pytest.mark.filterwarnings("ignore:precision .* on a CPU without native")


def make(tmp_path, name="run", resume=False, **overrides):
    return Trainer(
        tiny_config(**overrides),
        tmp_path / name,
        resume=resume,
        progress=False,
        tensorboard=False,
    )


def floating(tensors):
    return {k: v for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point()}


def floating_checkpoint_tensors(path) -> dict:
    return floating(checkpoint_tensors(path))


def test_bfloat16_runs_the_network_and_features_in_bfloat16_and_the_losses_in_float32(
    tmp_path, monkeypatch
):
    trainer = make(tmp_path, precision="bfloat16", steps=2, **VGG)
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen.setdefault(name, set()).add(output.dtype)

        return hook

    first_conv = next(m for m in trainer.net.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(record("network"))
    trainer.features.body[0].register_forward_hook(record("features"))
    for name in ("concentration_loss", "equivariance_losses", "semantic_consistency_loss_lowres"):
        real = getattr(losses, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            tensors = [a for a in args if torch.is_tensor(a)]
            tensors += [f for a in args if isinstance(a, list) for f in a]
            seen.setdefault(_name, set()).update(t.dtype for t in tensors)
            return _real(*args, **kwargs)

        monkeypatch.setattr(losses, name, spy)
    trainer.train()
    assert seen["network"] == {torch.bfloat16}
    assert seen["features"] == {torch.bfloat16}
    for name in ("concentration_loss", "equivariance_losses", "semantic_consistency_loss_lowres"):
        assert seen[name] <= {torch.float32}, (name, seen[name])

    # What stays float32: weights and buffers, the basis, gradients, optimiser state, the
    # checkpoint (and there is no loss scale to keep).
    assert {p.dtype for p in trainer.objective.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in trainer.net_parameters} == {torch.float32}
    assert {b.dtype for b in floating(trainer.net.state_dict()).values()} == {torch.float32}
    for opt in (trainer.net_optimizer, trainer.basis_optimizer):
        states = [s["momentum_buffer"] for s in opt.state.values()]
        assert states and {s.dtype for s in states} == {torch.float32}
    saved = floating_checkpoint_tensors(tmp_path / "run" / "checkpoint.pt")
    assert {v.dtype for v in saved.values()} == {torch.float32}
    assert load_checkpoint(tmp_path / "run")["grad_scaler"] == {}


def test_a_bfloat16_step_is_the_float32_step_up_to_bfloat16_rounding(tmp_path):
    """Losses of the first step (the same weights and draws) within a few times bfloat16's
    relative precision (2^-8 = 3.9e-3; measured here: at most 1.4e-3, the equivariance
    loss), and not equal to float32's: autocast is on."""
    common = {"steps": 1, "log_every": 1, "threads": 1, **VGG}
    results = {}
    for precision in ("float32", "bfloat16"):
        trainer = make(tmp_path, precision, precision=precision, **common)
        batch = next(iter_batches(trainer))
        results[precision] = trainer.train_step(batch)
    f32, bf16 = results["float32"], results["bfloat16"]
    assert not torch.equal(f32, bf16)
    # loss, concentration, equivariance, landmark_equivariance, semantic, orthonormal
    # (the last depends on the basis only: exactly float32's).
    torch.testing.assert_close(bf16[:5], f32[:5], rtol=1e-2, atol=0.0)
    assert bf16[5] == f32[5]


def iter_batches(trainer):
    from scops_fast.train.data import batches

    return batches(trainer.dataset, trainer.order, trainer.step, trainer.step + 1)


def test_the_field():
    assert tiny_config().precision == "float32"
    assert tiny_config(precision="bfloat16").precision == "bfloat16"
    with pytest.raises(ConfigError, match="precision: expected one of"):
        tiny_config(precision="float8")


def test_float16_with_repeated_parameters_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="precision 'float16'.*optim.nested_param_repeats"):
        make(tmp_path, precision="float16", **{"optim.nested_param_repeats": True})


def test_float16_loss_scale_is_checkpointed_and_resumed(tmp_path):
    overrides = {"precision": "float16", "steps": 4, "checkpoint_every": 2, "threads": 1}
    straight = make(tmp_path, "straight", **overrides)
    straight.train()
    first = make(tmp_path, "split", **overrides)
    first.train(until=2)
    saved = load_checkpoint(tmp_path / "split")["grad_scaler"]
    assert saved == first.scaler.state_dict() and saved["scale"] > 0
    del first
    second = make(tmp_path, "split", resume=True, **overrides)
    assert second.scaler.state_dict() == saved
    second.train()
    assert_bitwise_equal(state_tensors(straight), state_tensors(second))
    assert second.scaler.state_dict() == straight.scaler.state_dict()
    # A scale and growth count of its own, not the initial ones, survive the round trip.
    second.scaler.update(new_scale=torch.tensor(123.0))
    second.scaler._growth_tracker.fill_(7)
    second.save_checkpoint()
    third = make(tmp_path, "split", resume=True, **overrides)
    assert third.scaler.get_scale() == 123.0
    assert third.scaler.state_dict()["_growth_tracker"] == 7
    # float32 everywhere else, as with bfloat16.
    assert {v.dtype for v in floating_checkpoint_tensors(tmp_path / "split").values()} == {
        torch.float32
    }


@pytest.mark.parametrize("native", [False, True])
def test_the_slow_cpu_warning_names_the_precision(tmp_path, monkeypatch, native):
    # The CPU's answer is replaced, so that both verdicts are checked on every CPU.
    from scops_fast.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_has_native", lambda precision: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(tmp_path, precision="bfloat16")
    warned = any("precision 'bfloat16' on a CPU without native" in str(w.message) for w in caught)
    assert warned is not native
