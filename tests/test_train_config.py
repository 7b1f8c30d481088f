"""Config presets, validation messages, overrides."""

import json

import pytest

from scops_fast.train.config import (
    Config,
    ConfigError,
    load_config,
    parse_override,
    preset_names,
)


def test_presets_load():
    assert {"celeba-k8", "cub", "demo"} <= set(preset_names())
    for name in preset_names():
        assert load_config(name).name == name


def test_celeba_original_preset_is_spec_section_8():
    cfg = load_config("celeba-k8-original")
    assert cfg.model.arch == "deeplab_resnet50" and cfg.model.num_parts == 8
    assert cfg.model.head_dilations == [6, 12, 18, 24] and cfg.model.batchnorm == "train"
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.steps) == (256, 6, 100_000)
    w = cfg.loss
    assert (
        w.concentration,
        w.equivariance,
        w.landmark_equivariance,
        w.semantic,
        w.orthonormal,
    ) == (
        10.0,
        1e3,
        1e2,
        1e4,
        0.1,
    )
    assert cfg.features.layers == ["relu5_2", "relu5_4"]
    assert not cfg.features.normalize and cfg.features.saliency
    assert cfg.warp.mode == "affine" and cfg.warp.sigma == 0.01
    assert cfg.warp.random_scale == [0.7, 2.0] and not cfg.warp.random_mirror
    assert cfg.warp.padding == "zeros"
    j = cfg.jitter
    assert (j.brightness, j.contrast, j.saturation, j.hue) == (0.3, 0.3, 0.2, 0.2)
    o = cfg.optim
    assert (o.lr, o.head_lr_mult, o.momentum, o.weight_decay, o.poly_power) == (
        1e-5,
        10.0,
        0.9,
        5e-4,
        0.9,
    )
    assert (o.grad_clip, o.basis_lr, o.basis_momentum, o.basis_weight_decay, o.basis_grad_clip) == (
        5.0,
        0.01,
        0.9,
        5e-4,
        5.0,
    )


def test_defaults_are_the_original_protocol_without_its_quirks():
    original = load_config("celeba-k8-original")
    assert Config().loss == original.loss
    quirks = {"nested_param_repeats": False}
    assert Config().optim == original.optim.__class__(**{**vars(original.optim), **quirks})


def test_corrected_preset_differs_from_the_original_only_in_named_fields():
    from scops_fast.train.quirks import QUIRKS, flatten

    original = flatten(load_config("celeba-k8-original").to_dict())
    corrected = flatten(load_config("celeba-k8").to_dict())
    differing = {k for k in original if original[k] != corrected[k]}
    explained = {q.field for q in QUIRKS} | {
        "name",
        "seed",
        "model.pretrained_format",
        "model.input_mean",
        "model.input_std",
        "loss.concentration",
    }
    assert differing <= explained, differing - explained


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"modle": {}}, "unknown field 'modle'"),
        ({"model": {"archh": "small"}}, "unknown field 'model.archh'"),
        (
            {"model": {"arch": "vgg"}},
            r"model.arch: expected one of \['deeplab_resnet50', 'deeplab_resnet101', 'small'\]",
        ),
        ({"model": {"num_parts": 0}}, "model.num_parts: expected at least 1"),
        ({"model": {"num_parts": 2.5}}, "model.num_parts: expected an int"),
        ({"steps": True}, "steps: expected an int"),
        ({"optim": {"lr": "fast"}}, "optim.lr: expected a float"),
        ({"features": {"normalize": "yes"}}, "features.normalize: expected true or false"),
        ({"features": {"layers": ["relu9_9"]}}, "features.layers"),
        ({"warp": {"random_scale": [2.0, 1.0]}}, "warp.random_scale"),
        ({"loss": {"backend": "gpu"}}, "loss.backend: expected one of"),
        ({"data": 3}, "data: expected an object"),
        ({"model": {"input_std": [1, 2]}}, "model.input_std: expected 3 numbers"),
    ],
)
def test_bad_fields_are_named(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "bad.json" in str(info.value)


def test_invalid_json_and_missing_files(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"steps": 10,\n "model": }')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* line 2"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="nor a preset"):
        load_config("celeba-k9")
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(path)
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(folder)


def test_overrides():
    cfg = load_config("demo", {"data.batch_size": 3, "data.args.n": 5, "loss.backend": "reference"})
    assert cfg.data.batch_size == 3 and cfg.data.args["n"] == 5
    assert cfg.loss.backend == "reference"
    with pytest.raises(ConfigError, match="unknown field 'data.batchsize'"):
        cfg.replace({"data.batchsize": 3})
    with pytest.raises(ConfigError, match="data.batch_size: expected an int"):
        cfg.replace({"data.batch_size": "x"})
    assert parse_override("optim.lr=1e-3") == ("optim.lr", 1e-3)
    assert parse_override("model.pretrained=/a/b.pth") == ("model.pretrained", "/a/b.pth")
    assert parse_override("model.pretrained=null") == ("model.pretrained", None)
    with pytest.raises(ConfigError, match="dotted.name=value"):
        parse_override("lr")


def test_round_trip():
    cfg = load_config("cub")
    assert Config().replace({}) == Config()
    assert load_config("cub").to_dict() == cfg.to_dict()


def test_readme_shows_the_quirk_table_of_the_presets():
    import pathlib

    from scops_fast.train.quirks import quirk_table

    readme = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "paper.md").read_text()
    assert quirk_table() in readme, "regenerate it: python -m scops_fast.train.quirks"
