"""Crash-safe training:

- a run killed with SIGKILL after a checkpoint, then `--resume`d, ends with the weights
  of an uninterrupted run, bit for bit (and the same logged losses);
- an interrupted checkpoint write (an exception, or a kill, mid-file) never leaves a
  file that loads as a checkpoint, and the previous checkpoint stays usable; a corrupt
  checkpoint is reported by name;
- a data set with unreadable images trains to the end and reports how many it skipped
  (log, metrics.jsonl, checkpoint), with and without worker processes and the cache;
- an unreadable or invalid config file gives a clear message naming the bad field.
"""

import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import hang_guard
from PIL import Image
from train_helpers import assert_bitwise_equal, checkpoint_tensors, tiny_config
from train_helpers import child_env as training_child_env

from scops_fast.cli.train import main
from scops_fast.train import Trainer
from scops_fast.train import checkpoint as checkpoint_module
from scops_fast.train.checkpoint import CheckpointError, load_checkpoint, save_atomic
from scops_fast.train.progress import read_metrics


def write_config(path, **overrides):
    path.write_text(json.dumps(tiny_config(**overrides).to_dict()))
    return path


def child_env():
    # The same thread count as this process, which trains the uninterrupted run.
    return training_child_env(threads=torch.get_num_threads())


def cli(*args):
    return [sys.executable, "-m", "scops_fast.train", "--no-progress", *args]


def losses_of(records):
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]


# --------------------------------------------------------------------------- (a)
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    overrides = {"steps": 8, "checkpoint_every": 2, "log_every": 1}
    config = write_config(tmp_path / "tiny.json", **overrides)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cli("--config", str(config), "--out", str(killed)),
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # The uninterrupted run, in this process while the child starts up.
    straight = Trainer(
        tiny_config(**overrides), tmp_path / "straight", progress=False, tensorboard=False
    )
    straight.train()
    limit = hang_guard(180)
    deadline = time.monotonic() + limit
    ckpt_path = killed / "checkpoint.pt"
    while not ckpt_path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, f"no checkpoint within {limit:.0f} s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=hang_guard(60))
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(ckpt_path)["step"]
    assert 2 <= at_kill < 8, f"the run was not killed mid-run (checkpoint at {at_kill})"

    # `--resume` to the end (in this process: a second interpreter start costs seconds).
    assert main(["--resume", "--out", str(killed), "--config", str(config), "--no-progress"]) == 0
    assert f"step {at_kill} -> 8" in capsys.readouterr().err
    assert load_checkpoint(ckpt_path)["step"] == 8
    assert not (killed / "checkpoint.pt.tmp").exists()
    assert_bitwise_equal(
        checkpoint_tensors(ckpt_path), checkpoint_tensors(tmp_path / "straight" / "checkpoint.pt")
    )
    # The log of the killed run, cut at the checkpoint and continued: the same losses.
    assert losses_of(read_metrics(killed)) == losses_of(read_metrics(tmp_path / "straight"))


# --------------------------------------------------------------------------- (b)
def _partial_save(fraction=0.5):
    """A torch.save that writes the first `fraction` of the real bytes, then fails as a
    full disk does."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: int(len(data) * fraction)])
        f.flush()
        raise OSError(28, "No space left on device")

    return save


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(steps=6), tmp_path / "run", progress=False, tensorboard=False)
    trainer.train(until=2)
    path = tmp_path / "run" / "checkpoint.pt"
    before = checkpoint_tensors(path)
    with torch.no_grad():  # the run moves on; its next checkpoint write fails half-way
        trainer.objective.basis.add_(1.0)
    trainer.step = 3
    monkeypatch.setattr(checkpoint_module.torch, "save", _partial_save())
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.glob("checkpoint*")) == ["checkpoint.pt"]
    assert load_checkpoint(path)["step"] == 2
    assert_bitwise_equal(checkpoint_tensors(path), before)
    resumed = Trainer(
        tiny_config(steps=6), tmp_path / "run", resume=True, progress=False, tensorboard=False
    )
    assert resumed.step == 2


def _die_mid_write(path):
    """In a forked child: a first checkpoint, then a second one whose write is killed
    (SIGKILL) half-way through the file."""
    save_atomic({"model": {"w": torch.ones(3)}, "config": {}, "step": 1}, path)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint_module.torch.save = dying_save
    save_atomic({"model": {"w": torch.zeros(3)}, "config": {}, "step": 2}, path)


def test_a_kill_mid_write_leaves_nothing_that_loads_as_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            _die_mid_write(path)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint, intact
    partial = tmp_path / "checkpoint.pt.tmp"
    assert partial.exists() and partial.stat().st_size > 0
    for candidate in tmp_path.iterdir():
        if candidate != path:
            with pytest.raises(CheckpointError, match="unreadable"):
                load_checkpoint(candidate)
    # The next save replaces the partial file.
    save_atomic({"model": {}, "config": {}, "step": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_diverged_run_stops_without_saving_its_weights(tmp_path, capsys):
    """A learning rate of 1e8: the weights become NaN. The run stops at the first log or
    checkpoint step that sees them, keeps the checkpoint of the last finite weights, and
    its metrics.jsonl stays JSON that a strict parser reads (null, not NaN)."""
    out = tmp_path / "run"
    config = write_config(
        tmp_path / "c.json",
        steps=12,
        log_every=2,
        checkpoint_every=2,
        **{"optim.lr": 1e8, "optim.basis_lr": 1e8},
    )
    assert main(["--config", str(config), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    found = re.search(r"the weights are not finite at step (\d+) ", err)
    assert found and "Traceback" not in err, err
    step = int(found[1])
    # Which step first holds NaN is the rounding's: the step saved before it, if any.
    if (out / "checkpoint.pt").exists():
        saved = load_checkpoint(out)["step"]
        assert saved < step and f"still holds step {saved}, the last saved" in err
        weights = checkpoint_tensors(out)
        assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    else:
        assert "no checkpoint was written" in err

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=refuse) for line in lines]
    assert records[-1]["step"] == step  # logged, then found: every log step is checked


def test_a_diverged_run_over_an_earlier_one_does_not_offer_the_earlier_checkpoint(tmp_path, capsys):
    """--overwrite leaves the earlier run's checkpoint on disk until the first save: the
    message names what this run saved (nothing), not that file."""
    out = tmp_path / "run"
    calm = write_config(tmp_path / "calm.json", steps=3)
    assert main(["--config", str(calm), "--out", str(out), "--no-progress"]) == 0
    wild = write_config(
        tmp_path / "wild.json",
        steps=12,
        log_every=4,
        checkpoint_every=100,
        **{"optim.lr": 1e8, "optim.basis_lr": 1e8},
    )
    capsys.readouterr()
    assert main(["--config", str(wild), "--out", str(out), "--no-progress", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "this run has saved no checkpoint" in err and "still holds" not in err, err
    assert load_checkpoint(out)["step"] == 3  # the earlier run's, untouched


def test_a_corrupt_checkpoint_is_reported_by_name(tmp_path, capsys):
    trainer = Trainer(tiny_config(steps=4), tmp_path / "run", progress=False, tensorboard=False)
    trainer.train(until=2)
    path = tmp_path / "run" / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # e.g. copied from a full disk
    with pytest.raises(CheckpointError, match=r"checkpoint.pt.*unreadable"):
        Trainer(tiny_config(steps=4), tmp_path / "run", resume=True, progress=False)
    assert main(["--resume", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "unreadable" in err and "Traceback" not in err
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(2)}, path)  # a torch file, not a checkpoint
    with pytest.raises(CheckpointError, match="not a scops_fast training checkpoint"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- (c)
def image_folder(root: pathlib.Path, n_good=8) -> list[str]:
    """n_good noise images and two unreadable ones; returns the sorted file names."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        pixels = (rng.random((40, 36, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:02d}.png")
    (root / "img03b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    good = (root / "img05.png").read_bytes()
    (root / "img05b.png").write_bytes(good[: len(good) // 2])  # truncated mid-stream
    return sorted(p.name for p in root.iterdir())


@pytest.mark.parametrize(
    "workers, cache", [(0, False), (1, False), (0, True)], ids=["plain", "workers", "cache"]
)
def test_unreadable_images_are_skipped_and_reported(tmp_path, capfd, workers, cache):
    names = image_folder(tmp_path / "images")
    bad = {names.index("img03b.png"), names.index("img05b.png")}
    overrides = {
        "steps": 5,  # one epoch of 10 images at batch 2: every image is asked for
        "log_every": 5,
        "checkpoint_every": 5,
        "data.dataset": "folder",
        "data.args": {"root": str(tmp_path / "images")},
        "data.num_workers": workers,
        "data.cache": cache,
        "report": True,  # its pictures read the training images again
    }
    trainer = Trainer(tiny_config(**overrides), tmp_path / "run", progress=False, tensorboard=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as under -W ignore: the report is not a warning
        trainer.train()
    assert trainer.step == 5
    assert trainer.skipped == bad
    err = capfd.readouterr().err
    paths = [str(tmp_path / "images" / n) for n in ("img03b.png", "img05b.png")]
    for path in paths:  # one line per file, from the data set (or its worker), and not
        assert err.count(f"skipping unreadable {path}") == 1, err  # again for the report
    total = f"train: skipped 2 unreadable image(s) of the data set in this run ({', '.join(paths)})"
    assert total in err
    assert read_metrics(tmp_path / "run")[-1]["skipped_images"] == 2
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["training"]["skipped_files"] == paths
    assert load_checkpoint(tmp_path / "run")["skipped_indices"] == sorted(bad)


def test_skip_count_survives_a_resume(tmp_path):
    image_folder(tmp_path / "images")
    overrides = {
        "steps": 7,
        "log_every": 1,
        "checkpoint_every": 5,
        "data.dataset": "folder",
        "data.args": {"root": str(tmp_path / "images")},
    }
    first = Trainer(tiny_config(**overrides), tmp_path / "run", progress=False, tensorboard=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.train(until=5)
    assert len(first.skipped) == 2
    second = Trainer(
        tiny_config(**overrides), tmp_path / "run", resume=True, progress=False, tensorboard=False
    )
    assert second.skipped == first.skipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second.train()
    assert read_metrics(tmp_path / "run")[-1]["skipped_images"] == 2


# --------------------------------------------------------------------------- (d)
def _config_cases(tmp_path):
    good = tiny_config().to_dict()

    def with_(dotted, value):
        data = json.loads(json.dumps(good))
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
        return json.dumps(data)

    return [
        ("directory", None, "cannot read config file"),
        ("binary", b"\xff\xfe\x00garbage", "not UTF-8 text"),
        ("empty", "", "is not valid JSON: Expecting value at line 1"),
        ("truncated", json.dumps(good)[:-20], "is not valid JSON"),
        ("list", "[1, 2]", "expected a JSON object at the top level"),
        ("nan-lr", with_("optim.lr", float("nan")), "optim.lr: expected a finite number"),
        ("inf-weight", with_("loss.semantic", float("inf")), "loss.semantic: expected a finite"),
        ("float-steps", with_("steps", 2.5), "steps: expected an int, got 2.5"),
        ("bool-parts", with_("model.num_parts", True), "model.num_parts: expected an int"),
        ("zero-batch", with_("data.batch_size", 0), "data.batch_size: expected at least 1"),
        ("typo", with_("model.num_partz", 3), "unknown field 'model.num_partz'"),
        ("section-type", with_("data", [1]), "data: expected an object"),
        ("padding", with_("warp.padding", "reflect"), "warp.padding: expected one of"),
        ("backend", with_("loss.backend", "fortran"), "loss.backend: expected one of"),
        ("scale", with_("warp.random_scale", [2.0, 1.0]), "warp.random_scale: expected"),
        ("mean", with_("model.input_mean", [0.5]), "model.input_mean: expected 3 numbers"),
        ("dataset", with_("data.dataset", "nowhere"), "data.dataset: expected one of"),
        ("dataset-args", with_("data.args", {"bogus": 1}), "data.args do not fit"),
    ]


def test_bad_config_files_name_the_field(tmp_path, capsys):
    for name, content, expected in _config_cases(tmp_path):
        path = tmp_path / f"{name}.json"
        if content is None:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        code = main(["--config", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, (name, err[-500:])
        assert expected in err, (name, err[-500:])
        assert "Traceback" not in err, name
        if name not in ("directory", "binary", "empty", "truncated", "list"):
            assert str(path) in err or "data.args" in err or "data.dataset" in err, (name, err)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.num_partz=3", "unknown field 'model.num_partz'"),
        ("data.batch_size=two", "data.batch_size: expected an int, got 'two'"),
        ("optim.lr=NaN", "optim.lr: expected a finite number"),
        ("loss.backend=fortran", "loss.backend: expected one of"),
        ("noequals", "override 'noequals': expected dotted.name=value"),
    ],
)
def test_bad_overrides_name_the_field(tmp_path, capsys, override, expected):
    config = write_config(tmp_path / "tiny.json")
    code = main(["--config", str(config), "--set", override, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err[-500:]
