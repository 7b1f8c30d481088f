"""The original's quirks as config fields: each one on and off, on the tiny trainer."""

import pytest
import torch
from train_helpers import assert_bitwise_equal, state_tensors, tiny_config

from scops_fast import losses
from scops_fast.train import Trainer
from scops_fast.train.augment import GlobalBatchColorJitter
from scops_fast.train.config import JitterConfig
from scops_fast.train.trainer import nested_repeats

ALL_QUIRKS = {
    "features.bgr_quirk": True,
    "jitter.implementation": "pil",
    "jitter.bgr_quirk": True,
    "warp.grid_solve": "float32",
    "warp.padding": "border",
    "warp.logits_padding": "zeros",
    "optim.nested_param_repeats": True,
}


def make(tmp_path, name="run", resume=False, **overrides):
    cfg = tiny_config(**overrides)
    return Trainer(cfg, tmp_path / name, resume=resume, progress=False, tensorboard=False)


def test_resume_is_bitwise_with_every_quirk_on(tmp_path):
    straight = make(tmp_path, "straight", **ALL_QUIRKS)
    straight.train()
    first = make(tmp_path, "split", **ALL_QUIRKS)
    first.train(until=3)
    second = make(tmp_path, "split", resume=True, **ALL_QUIRKS)
    second.train()
    assert_bitwise_equal(state_tensors(straight), state_tensors(second))


def test_nested_repeats_step_a_parameter_once_per_enclosing_module(tmp_path):
    trainer = make(tmp_path, **{"optim.nested_param_repeats": True})
    counts = {}
    for p in nested_repeats(trainer.net):
        counts[id(p)] = counts.get(id(p), 0) + 1
    names = dict(trainer.net.backbone.named_parameters())
    for name, p in names.items():
        if p.requires_grad:
            assert counts[id(p)] == len(name.split(".")) - 1, name
    # Clipping still sees each parameter once.
    assert len(trainer.net_parameters) == len({id(p) for p in trainer.net_parameters})
    # The multi-tensor update (torch's default for GPU tensors) would not chain the repeats.
    assert trainer.net_optimizer.defaults["foreach"] is False

    # One SGD step applies the rule once per occurrence: at step 0 each occurrence
    # starts its own momentum from grad + wd * (the parameter as it then is).
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    with pytest.warns(UserWarning, match="duplicate"):
        opt = torch.optim.SGD([p, p, p], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad = torch.tensor([2.0, 1.0])
    expected = p.detach().clone()
    for _ in range(3):
        expected = expected - 0.1 * (p.grad + 0.5 * expected)
    opt.step()
    torch.testing.assert_close(p.detach(), expected)


def test_logits_are_warped_with_their_own_padding(tmp_path, monkeypatch):
    seen = []
    real = losses.equivariance_losses

    def spy(*args, padding_mode, **kwargs):
        seen.append(padding_mode)
        return real(*args, padding_mode=padding_mode, **kwargs)

    monkeypatch.setattr(losses, "equivariance_losses", spy)
    make(tmp_path, **{"warp.padding": "border"}).train(until=1)
    make(tmp_path, "b", **{"warp.padding": "border", "warp.logits_padding": "border"}).train(
        until=1
    )
    assert seen == ["zeros", "border"]


@pytest.mark.rounding
def test_per_image_concentration_is_the_original_times_the_batch(tmp_path):
    # One network output, two reductions of the same per-image terms: at most the rounding
    # of a sum of two and a halving apart (exactly twice here), held to 1e-6.
    a = make(tmp_path, "a")
    b = make(tmp_path, "b", **{"loss.concentration_reduction": "per_image"})
    batch = next(iter(torch.utils.data.DataLoader(a.dataset, batch_size=2)))
    batch = {k: batch[k] for k in ("img", "saliency")}
    _, terms_a = a.compute_losses(batch)
    _, terms_b = b.compute_losses(batch)
    assert terms_b[0].item() == pytest.approx(terms_a[0].item() * 2, rel=1e-6)
    torch.testing.assert_close(terms_a[1:], terms_b[1:])


@pytest.mark.parametrize("quirk", [False, True])
def test_pil_jitter_with_neutral_factors_keeps_the_levels(quirk):
    # No hue: PIL's 8-bit HSV round trip moves levels even for a zero shift.
    cfg = JitterConfig(hue=0.0, implementation="pil", bgr_quirk=quirk)
    jitter = GlobalBatchColorJitter(cfg, 2, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    # Away from 0 and 255, where the quirk's shift clips.
    images = torch.randint(30, 220, (2, 3, 9, 7), generator=g).float() / 255.0
    out = jitter.apply(
        images, torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2), torch.arange(4).repeat(2, 1)
    )
    # Truncation to 8 bits may lose one level where the float32 round trip lands below it.
    assert (out - images).abs().max() * 255 <= 1.0 + 1e-3
    assert (torch.round(out * 255) == torch.round(images * 255)).float().mean() > 0.5


def test_pil_and_tensor_jitter_agree_to_a_few_levels():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (3, 3, 12, 10), generator=g).float() / 255.0
    pil = GlobalBatchColorJitter(JitterConfig(implementation="pil"), 3, torch.Generator())
    tensor = GlobalBatchColorJitter(JitterConfig(), 3, torch.Generator())
    factors, orders = pil.draw()
    a, b = pil.apply(images, factors, orders), tensor.apply(images, factors, orders)
    # Different arithmetic (PIL's integer paths, truncation): close, not equal.
    assert not torch.equal(a, b)
    assert (a - b).abs().mean() * 255 < 3.0
