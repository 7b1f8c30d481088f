"""Networks of the training system: output sizes, the DeepLab head of SPEC section 8,
BatchNorm handling, weight loading, feature extractors."""

import pytest
import torch
import torchvision
from torch import nn

from scops_fast.models import (
    LowLevelFeatures,
    VGG19Features,
    build_features,
    deeplab_resnet50,
    logits_size,
    small_net,
)
from scops_fast.models import deeplab as deeplab_module
from scops_fast.models import vgg as vgg_module


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    return deeplab_resnet50(5)


@pytest.mark.parametrize("size", [(256, 256), (64, 64), (48, 80), (320, 200)])
def test_logits_size_is_h_over_8_plus_1(size):
    h, w = size
    assert logits_size(h, w) == (h // 8 + 1, w // 8 + 1)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_deeplab_output_size(deeplab, size):
    with torch.no_grad():
        out = deeplab(torch.randn(1, 3, *size))
    assert out.shape == (1, 6, size[0] // 8 + 1, size[1] // 8 + 1)


def test_deeplab_strides_and_dilations(deeplab):
    trunk = deeplab.backbone
    assert trunk.stem[0].stride == (2, 2) and trunk.stem[3].ceil_mode
    assert trunk.layer2[0].conv2.stride == (2, 2)
    for layer, dilation in ((trunk.layer3, 2), (trunk.layer4, 4)):
        for block in layer:
            assert block.conv2.stride == (1, 1)
            assert block.conv2.dilation == (dilation, dilation) == block.conv2.padding
        assert layer[0].downsample[0].stride == (1, 1)


def test_deeplab_head_matches_spec(deeplab):
    branches = deeplab.head.classifier.branches
    assert [conv.dilation[0] for conv in branches] == [6, 12, 18, 24]
    for conv in branches:
        assert conv.in_channels == 1024 and conv.out_channels == 6
        assert conv.kernel_size == (3, 3) and conv.bias is not None
        assert conv.padding[0] == conv.dilation[0]
        assert abs(conv.weight.std().item() - 0.01) < 5e-4
        assert abs(conv.weight.mean().item()) < 5e-4
    assert deeplab.head.split == 1024


@pytest.mark.rounding
def test_deeplab_appearance_half_and_logits_from_second_half(deeplab):
    # The head's sum of four branches against ours: float32 summation order only, within
    # assert_close's float32 defaults (1.3e-6 relative + 1e-5).
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = deeplab.backbone(x)
        logits, appearance = deeplab(x, return_appearance=True)
        expected = sum(conv(feats[:, 1024:]) for conv in deeplab.head.classifier.branches)
    assert feats.shape[1] == 2048
    assert torch.equal(appearance, feats[:, :1024])
    torch.testing.assert_close(logits, expected)


def test_deeplab_batchnorm_affine_frozen_and_batch_statistics(deeplab):
    bns = [m for m in deeplab.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.weight.requires_grad and not m.bias.requires_grad for m in bns)
    trainable = {id(p) for p in deeplab.parameters() if p.requires_grad}
    assert not any(id(m.weight) in trainable for m in bns)
    deeplab.train()
    assert all(m.training for m in bns)
    head = {id(p) for p in deeplab.head_parameters()}
    assert len(head) == 8 and head <= trainable


@pytest.mark.rounding
def test_batchnorm_eval_mode_survives_train():
    # Batch 2 against batch 1 through oneDNN's convolutions: 3e-8 apart here (scale 0.14),
    # also with one-ulp moved inputs, within assert_close's float32 defaults (1e-5 absolute);
    # batch statistics would change the first image's output by O(1).
    net = small_net(3, width=4, batchnorm="eval").train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert net.training and not any(m.training for m in bns)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net(x)[:1], net(x[:1]))  # no batch statistics


def test_deeplab_loads_torchvision_weights_from_a_path(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    net = deeplab_resnet50(2, pretrained=str(path))
    assert torch.equal(net.backbone.stem[0].weight, source.conv1.weight)
    assert torch.equal(net.backbone.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
    assert torch.equal(net.backbone.stem[1].running_var, source.bn1.running_var)


def test_missing_weights_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        deeplab_resnet50(2, pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="resnet50-.*hub cache"):
        deeplab_resnet50(2, pretrained="torchvision")
    with pytest.raises(FileNotFoundError, match="features.weights"):
        VGG19Features("torchvision")
    with pytest.raises(ValueError, match="random_vgg19"):
        VGG19Features(None)


def test_vgg19_reads_the_hub_cache_without_downloading(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(2)
    convs = vgg_module._vgg19_convolutions()
    state = {f"features.{k}": v for k, v in convs.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # ignored
    seen = []

    def fake_load(path, **kwargs):
        seen.append(path)
        return state

    monkeypatch.setattr(vgg_module.torch, "load", fake_load)
    feats = VGG19Features("torchvision")
    assert seen == [tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth"]
    assert torch.equal(feats.body[34].weight, state["features.34.weight"])
    assert len(feats.body) == 36
    out = feats(torch.rand(2, 3, 32, 48))
    assert [tuple(f.shape) for f in out] == [(2, 512, 2, 3), (2, 512, 2, 3)]
    assert not any(p.requires_grad for p in feats.parameters())
    assert not feats.train().training


def test_vgg19_taps_are_relu5_2_and_relu5_4():
    feats = build_features("random_vgg19", seed=3)
    x = torch.rand(1, 3, 32, 32)
    ref = (x - feats.mean) / feats.std
    acts = []
    for layer in feats.body:
        ref = layer(ref)
        acts.append(ref)
    out = feats(x)
    torch.testing.assert_close(out[0], acts[31])
    torch.testing.assert_close(out[1], acts[35])
    assert isinstance(feats.body[35], nn.ReLU) and isinstance(feats.body[34], nn.Conv2d)


def test_random_vgg19_is_seeded():
    torch.manual_seed(0)
    a = build_features("random_vgg19", seed=5)
    torch.manual_seed(1)
    b = build_features("random_vgg19", seed=5)
    assert torch.equal(a.body[0].weight, b.body[0].weight)


def test_bgr_quirk_shifts_red_and_blue():
    plain = build_features("random_vgg19", seed=0)
    quirk = build_features("random_vgg19", seed=0, bgr_quirk=True)
    x = torch.rand(1, 3, 32, 32)
    # The original adds the BGR-ordered mean (104.007, 116.669, 122.679) to RGB images.
    shift = torch.tensor([104.00698793 - 122.67891434, 0.0, 122.67891434 - 104.00698793])
    shifted = x + shift.view(1, 3, 1, 1) / 255
    torch.testing.assert_close(quirk(x)[0], plain(shifted)[0])


def test_small_net_interface():
    net = small_net(4, width=4)
    logits, appearance = net(torch.randn(2, 3, 36, 28), return_appearance=True)
    assert logits.shape == (2, 5, 9, 7)
    assert appearance.shape == (2, 8, 9, 7)
    assert any(
        p.requires_grad
        for m in net.modules()
        if isinstance(m, nn.BatchNorm2d)
        for p in m.parameters()
    )


def test_lowlevel_features():
    feats = LowLevelFeatures(stride=4)
    out = feats(torch.rand(2, 3, 30, 32))
    assert len(out) == 1 and out[0].shape == (2, feats.channels, 8, 8)
    assert (out[0] >= 0).all()


def test_unknown_feature_kind():
    with pytest.raises(ValueError, match="features.kind"):
        build_features("resnet")


def test_deeplab_module_constants():
    assert deeplab_module.DEEPLAB_DILATIONS == (6, 12, 18, 24)
