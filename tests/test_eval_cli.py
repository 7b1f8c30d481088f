"""`scops-eval` / `python -m scops_fast.cli.eval` on a checkpoint trained for a few steps."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import hang_guard
from PIL import Image
from train_helpers import tiny_config

from scops_fast.cli.eval import main
from scops_fast.data import SyntheticParts
from scops_fast.eval.compare import criteria, evaluate_with_baselines
from scops_fast.train import Trainer

KEYS = {"landmark_error_test", "keypoint_nmi", "keypoint_ari", "part_nmi", "part_ari", "fg_iou"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Two steps of the small network on 32x32 SyntheticParts."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(
        steps=2,
        **{"data.dataset": "synthetic", "data.args": {"n": 4, "seed": 0}},
    )
    Trainer(cfg, out, progress=False, tensorboard=False).train()
    return out / "checkpoint.pt"


def test_synthetic_json_on_stdout_and_file(checkpoint, tmp_path, capsys):
    out = tmp_path / "sub" / "eval.json"
    argv = ["--checkpoint", str(checkpoint), "--n", "6", "--train-n", "8", "--out", str(out)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["data"] == {
        "dataset": "synthetic",
        "size": 32,
        "test": {"n": 6, "seed": 2},
        "train": {"n": 8, "seed": 1},
    }
    assert printed["checkpoint_step"] == 2 and printed["num_parts"] == 3
    for name in ("model", "one_part", "kmeans"):
        numbers = printed["model"] if name == "model" else printed["baselines"][name]
        assert KEYS <= set(numbers), name
        assert numbers["n_test"] == 6 and numbers["n_train"] == 8
    assert printed["baselines"]["kmeans"]["fg_iou"] == 1.0  # ground-truth foreground
    assert printed["baselines"]["one_part"]["part_nmi"] == 0.0
    crit = printed["criteria"]
    assert {"landmark_error_ratio_vs_kmeans", "landmark_ok", "part_nmi_margin_vs_kmeans"} <= set(
        crit
    )
    assert crit["passed"] == (crit["landmark_ok"] and crit["nmi_ok"])


@pytest.fixture
def bars(monkeypatch):
    """tqdm on a terminal, faked: every bar made, as a dict of what it was given and did."""
    import sys
    import types

    from scops_fast import terminal

    made = []

    class FakeBar:
        def __init__(self, total, initial, unit, desc, **kwargs):
            self.record = {"total": total, "unit": unit, "desc": desc, "done": 0, "closed": False}
            made.append(self.record)

        @property
        def n(self):
            return self.record["done"]

        @property
        def total(self):
            return self.record["total"]

        @total.setter
        def total(self, value):
            self.record["total"] = value

        def update(self, n):
            self.record["done"] += n

        def refresh(self):
            pass

        def close(self):
            self.record["closed"] = True

    monkeypatch.setattr(terminal, "is_terminal", lambda stream: True)
    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=FakeBar))
    return made


def test_a_progress_bar_counts_every_image_on_a_terminal(checkpoint, capsys, bars):
    argv = ["--checkpoint", str(checkpoint), "--n", "7", "--train-n", "9", "--batch-size", "4"]
    assert main(argv) == 0
    assert bars == [
        {"total": 16, "unit": "image", "desc": "evaluating", "done": 16, "closed": True}
    ]
    assert main([*argv, "--limit", "5"]) == 0
    assert bars[-1]["total"] == bars[-1]["done"] == 10
    assert main([*argv, "--no-progress"]) == 0
    assert len(bars) == 2
    capsys.readouterr()


def test_the_bar_ends_full_when_the_regression_is_dropped(bars):
    """CUB's invisible keypoints are NaN: the regression is dropped at the first train batch,
    and the bar's total loses the train items it will not score."""
    from scops_fast.eval import evaluate_dataset

    class Invisible(SyntheticParts):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {**item, "landmarks": torch.full_like(item["landmarks"], float("nan"))}

    def predict(images):
        return torch.softmax(torch.randn(len(images), 4, *images.shape[-2:]), 1)

    train, test = Invisible(9, size=16, seed=1), SyntheticParts(5, size=16, seed=2)
    result = evaluate_dataset(predict, train, test, batch_size=4, progress=True)
    assert result["n_test"] == 5
    assert [(b["done"], b["total"], b["closed"]) for b in bars] == [(5, 5, True)]


def test_other_image_size_and_no_regression(checkpoint, capsys):
    # 48x48 images: the network sees them at its training size, 32, and maps come back at 48.
    argv = ["--checkpoint", str(checkpoint.parent), "--size", "48", "--n", "4", "--no-regression"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["data"]["size"] == 48 and printed["network_input_size"] == 32
    assert "landmark_error_test" not in printed["model"] and "part_nmi" in printed["model"]
    assert "landmark_ok" not in printed["criteria"]


def test_errors(checkpoint, tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint), "--data", "celeba"]) == 2
    assert "--root" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint), "--data", "imagenet"]) == 2
    assert "expected one of" in capsys.readouterr().err
    (tmp_path / "celeba").mkdir()
    for root, says in ((tmp_path / "nosuch", "is not a folder"), (tmp_path / "celeba", "")):
        assert main(["--checkpoint", str(checkpoint), "--data", "celeba", "--root", str(root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"scops-eval: error: --root: {root}") and says in err
        assert "[Errno" not in err
    assert "list_landmarks_celeba.txt is missing; expected under the root: img_celeba/" in err
    # Another argument's missing folder is named as itself, not as --root's.
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    argv = ["--checkpoint", str(checkpoint), "--data", "folder", "--root", str(photos)]
    assert main([*argv, "--saliency-dir", str(tmp_path / "nosal")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scops-eval: error: saliency folder") and "--root" not in err, err


@pytest.mark.parametrize(
    "flag, value, least",
    [
        ("--batch-size", "0", 1),
        ("--limit", "-1", 1),
        ("--n", "-5", 1),
        ("--train-n", "0", 1),
        ("--net-size", "-3", 0),
        ("--size", "0", 8),
        ("--pictures-n", "0", 1),
    ],
)
def test_a_number_out_of_range_is_refused_by_its_flag(checkpoint, capsys, flag, value, least):
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", str(checkpoint), "--data", "synthetic", flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"scops-eval: error: argument {flag}: expected at least {least}, got {value}" in err


def test_a_device_this_machine_lacks_is_named_before_the_checkpoint_is_read(
    checkpoint, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, says in (("cuda", "torch sees no CUDA device"), ("gpu", "is not a device")):
        assert main(["--checkpoint", str(checkpoint), "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"scops-eval: error: --device: '{device}'") and says in err


def sheet_height(n_images, size, num_parts, truth_names=None):
    """Height of scops-eval's picture: it depends only on the layout (rows, legend lines),
    not on what the parts are."""
    from scops_fast import viz

    images = torch.zeros(n_images, 3, size, size)
    probs = torch.zeros(n_images, num_parts + 1, size, size)
    truth = None
    if truth_names is not None:
        truth = torch.zeros(n_images, size, size, dtype=torch.long)
        truth[0, 0, : len(truth_names)] = torch.arange(1, len(truth_names) + 1)
    sheet = viz.part_grid(
        images, probs, truth=truth, truth_names=truth_names, captions=["x"] * n_images, title="t"
    )
    return sheet.height


def test_folder_of_images_is_not_scored_but_pictured(checkpoint, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(11):
        Image.new("RGB", (40, 30), (20 * i, 90, 200)).save(photos / f"{i}.png")
    out = tmp_path / "eval" / "cats.json"
    argv = ["--checkpoint", str(checkpoint), "--data", f"folder:{photos}", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed == json.loads(out.read_text())
    # Nothing was scored, and nothing claims a verdict.
    assert printed["scored"] is False and printed["criteria"] is None
    assert "model" not in printed and "baselines" not in printed
    assert printed["n_images"] == 11
    picture = tmp_path / "eval" / "cats_parts.png"
    assert printed["pictures"] == {"path": str(picture), "images": 8}
    lines = captured.err.strip().splitlines()
    assert lines == [
        f"scops-eval: no labels in {photos}, so nothing is scored; the parts found on 8 of its "
        f"11 images: {picture}"
    ]
    with Image.open(picture) as sheet:
        # 8 columns of the images at the network's 32 px, enlarged 3x; no true-parts row.
        assert sheet.width > 8 * 98
        assert sheet.height == sheet_height(8, 32, 3)
        assert len(sheet.convert("RGB").getcolors(1 << 20)) > 50
    # Without --out: beside the checkpoint, not over the run's own parts.png.
    assert main(["--checkpoint", str(checkpoint), "--data", "folder", "--root", str(photos)]) == 0
    assert json.loads(capsys.readouterr().out)["pictures"]["path"] == str(
        checkpoint.parent / "eval_parts.png"
    )
    assert (checkpoint.parent / "eval_parts.png").is_file()


def test_labelled_data_is_scored_and_pictured_on_request(checkpoint, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoint), "--n", "4", "--no-regression"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["scored"] is True and "pictures" not in plain
    assert isinstance(plain["criteria"]["passed"], bool)
    picture = tmp_path / "synthetic.png"
    assert main([*argv, "--pictures", str(picture), "--pictures-n", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pictures"] == {"path": str(picture), "images": 3}
    assert printed["model"] == plain["model"]  # the numbers do not depend on the pictures
    from PIL import Image

    with Image.open(picture) as sheet:  # SyntheticParts has true parts: one row more
        assert sheet.height == sheet_height(3, 32, 3, SyntheticParts.part_names)


@pytest.mark.rounding
def test_perfect_predictions_pass_the_criteria():
    # Separate splits, more images than regression inputs: a 6-image fit on its own
    # training images is exact for both models, and the ratio of two ~1e-16 errors is
    # BLAS rounding noise (0.85 on one CPU), not a check of the criteria. Noise model: the
    # oracle's maps are exact one-hots, the regressions float64 on well-posed fits; the
    # ratio (0.33) stays so under `make test-rounding`'s threads and ISAs, against 0.5.
    train, test = SyntheticParts(40, size=32, seed=0), SyntheticParts(20, size=32, seed=1)
    lookup = {float(d[i]["img"].sum()): d[i]["parts"] for d in (train, test) for i in range(len(d))}

    def oracle(images):  # the ground-truth parts, looked up by image
        parts = torch.stack([lookup[float(im.sum())] for im in images])
        return torch.nn.functional.one_hot(parts, 10).permute(0, 3, 1, 2).float()

    result = evaluate_with_baselines(oracle, train, test, 4, batch_size=8)
    assert result["model"]["part_nmi"] == pytest.approx(1.0)
    # The oracle's error is a third of k-means' here; the criterion asks for 0.8.
    assert result["model"]["landmark_error_test"] > 1e-3
    assert result["criteria"]["landmark_error_ratio_vs_kmeans"] < 0.5
    assert result["criteria"]["passed"]
    assert criteria({"part_nmi": 0.5}, {"part_nmi": 0.45}) == {
        "part_nmi_margin_vs_kmeans": pytest.approx(0.05),
        "nmi_margin_min": 0.1,
        "nmi_ok": False,
        "passed": False,
    }


def test_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "scops_fast.cli.eval", "--help"],
        capture_output=True,
        text=True,
        timeout=hang_guard(120),
    )
    assert result.returncode == 0 and "--checkpoint" in result.stdout


def test_without_data_it_scores_the_runs_own_data_set(tmp_path, capsys):
    """A run trained on a folder is evaluated on that folder, not on synthetic images."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.new("RGB", (24, 24), (60 * i, 30, 30)).save(photos / f"{i}.png")
    run = tmp_path / "run"
    cfg = tiny_config(steps=1, **{"data.dataset": "folder", "data.args": {"root": str(photos)}})
    Trainer(cfg, run, progress=False, tensorboard=False).train()
    assert main(["--checkpoint", str(run), "--out", str(tmp_path / "e.json")]) == 0
    captured = capsys.readouterr()
    assert f"scoring on the data set the run trained on: folder {photos}" in captured.err
    printed = json.loads(captured.out)
    assert printed["data"]["dataset"] == "folder" and printed["scored"] is False
    custom = tmp_path / "custom"
    Trainer(tiny_config(steps=1), custom, progress=False, tensorboard=False).train()
    assert main(["--checkpoint", str(custom)]) == 2
    err = capsys.readouterr().err
    assert "--data: the run trained on 'train_fakes:TinyParts', which scops-eval cannot" in err
