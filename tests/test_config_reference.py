"""The configuration reference (scops-train --print-config, docs/config.md) comes from the config
dataclasses: every field documented, the committed page in step, the printout resolved."""

import re

from scops_fast.cli.train import main
from scops_fast.train import config_reference
from scops_fast.train.config import Config, load_config


def test_every_field_has_a_meaning_and_the_page_is_in_step():
    infos = config_reference.fields()
    names = [info.name for info in infos]
    assert len(names) == len(set(names)) and "data.accumulate" in names
    assert [n for n, info in zip(names, infos, strict=True) if not info.meaning] == []
    assert config_reference.main(["--check"]) == 0, "regenerate docs/config.md"
    page = config_reference.DOC_PATH.read_text()
    for name in names:
        assert f"| `{name}` |" in page


def test_print_config_resolves_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--print-config", "--config", "demo", "--set", "model.num_parts=5"]
    assert main([*argv, "--data", "folder", "--root", "photos", "--resize", "crop"]) == 0
    out = capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing read
    assert "model.num_parts = 5  [default 8; >= 1]" in out
    assert "    # K, the number of parts" in out
    assert 'data.args = {"root": "photos", "resize": "crop"}' in out
    assert 'model.arch = "small"  [default "deeplab_resnet50"; "deeplab_resnet50", ' in out
    printed = set(re.findall(r"^([a-z_.]+) = ", out, flags=re.M))
    assert printed == {info.name for info in config_reference.fields()}
    assert load_config("demo").model.num_parts != 5  # the preset itself is untouched


def test_print_config_without_a_preset_shows_the_defaults(capsys):
    assert main(["--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# scops-train configuration: the defaults\n")
    assert f"steps = {Config().steps}  [>= 1]" in out
    assert "  [default " not in out  # nothing differs from the defaults


def test_print_config_json_is_a_config_file_of_the_same_run(tmp_path, capsys):
    for preset in ("demo", "celeba-k8-original"):
        assert main(["--print-config", "json", "--config", preset, "--set", "steps=7"]) == 0
        path = tmp_path / f"{preset}.json"
        path.write_text(capsys.readouterr().out)
        assert load_config(str(path)) == load_config(preset, {"steps": 7})
