"""The original trainer's experiment files (exps/*.json) as our config."""

import json

import pytest
from original_fixtures import load

from scops_fast.train.config import load_config


def original_experiment() -> dict:
    """The CelebA K=8 experiment file as the step fixture ran it, with the original's
    values restored where the fixture changed them for a small CPU run."""
    exp = json.loads(str(load("step").arrays["config"]))
    exp.update(
        {
            "input_size": "256,256",
            "batch_size": 6,
            "num_steps": 100000,
            "num_workers": 8,
            "restore_from": None,
            "snapshot_dir": "snapshots_CelebA",
        }
    )
    return exp


def test_the_celeba_k8_experiment_maps_to_the_original_preset(tmp_path):
    path = tmp_path / "SCOPS_K8_retrain.json"
    path.write_text(json.dumps(original_experiment()))
    with pytest.warns(UserWarning, match="no effect here: tb_dir .*snapshot_dir") as seen:
        cfg = load_config(path)
    preset = load_config("celeba-k8-original")
    ours, theirs = cfg.to_dict(), preset.to_dict()
    # Same experiment, so the same config but for names, paths and the seed it names.
    assert cfg.name == "SCOPS_K8_retrain" and cfg.seed == 1234
    assert cfg.data.args["root"] == "./data/CelebA"
    assert cfg.data.args["split"] == "MAFL/celebA_training.txt"
    assert cfg.data.num_workers == 8
    for section in ("model", "features", "loss", "warp", "jitter", "optim"):
        assert ours[section] == theirs[section], section
    assert cfg.steps == 100000 and cfg.data.image_size == 256 and cfg.data.batch_size == 6
    assert not any("does not know" in str(w.message) for w in seen)


def test_unknown_fields_are_named_and_unsupported_values_refused(tmp_path):
    exp = original_experiment()
    exp["lambda_typo"] = 3.0
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(exp))
    with pytest.warns(UserWarning, match="does not know, ignored: lambda_typo"):
        load_config(path)
    exp = original_experiment()
    exp["model"] = "DeepLab"
    path.write_text(json.dumps(exp))
    with pytest.raises(ValueError, match="model 'DeepLab' is not supported"):
        load_config(path)


def test_flags_map_to_their_fields(tmp_path):
    exp = original_experiment()
    exp.update(
        {
            "eqv_border_padding": True,
            "tps_mode": "projective",
            "random_scale_low": 0.8,
            "random_scale_high": 1.2,
            "no_sal_masking": True,
            "model": "DeepLab_2branch",
            "restore_from": "None",
            "ref_norm": True,
        }
    )
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(exp))
    with pytest.warns(UserWarning):
        cfg = load_config(path, {"steps": 5})
    assert (cfg.warp.padding, cfg.warp.logits_padding, cfg.warp.mode) == (
        "border",
        "zeros",
        "projective",
    )
    assert cfg.warp.random_scale == [0.8, 1.2] and cfg.steps == 5
    assert not cfg.features.saliency and cfg.features.normalize
    assert cfg.model.arch == "deeplab_resnet101" and cfg.model.pretrained is None
