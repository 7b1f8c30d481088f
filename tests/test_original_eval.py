"""The landmark evaluation of the original (evaluate_celebAWild.py's part centres,
evaluation/face_evaluation_wild.py's regression) against ours on fixed logits.

Noise model (tests marked `rounding`; scripts/measure_rounding.py moves the logits by one
float32 ulp, up or down at random). The record is the original's result on the machine that
made it. Our centres (a float32 softmax, then float64 sums) lie 9.5e-7 px from the record
and move by as much under one-ulp moves of the logits: 2e-4 px leaves 200x that. The
regression errors from them lie 2.9e-7 (relative) from the record, the original's float32
centre sums against our float64 ones, and move by 1.4e-7: 3e-6 leaves 19x that. The
regression is invariant to any affine map of the centres (a half-pixel shift changes
nothing), but centres jittered by 1e-3 px move it by 2.6e-4. On the record's own centres the
regression is float64 throughout: float64 one-ulp moves change it by 8e-16, held to 1e-9.
"""

import numpy as np
import pytest
import torch
from original_fixtures import load

from scops_fast.eval import landmark_regression_error, part_centers_pixels


def centres(split: str, nudge=lambda t: t) -> np.ndarray:
    logits = nudge(load("evaluation")[f"{split}.logits"])
    return part_centers_pixels(torch.softmax(logits, 1)[:, 1:]).double().numpy()


@pytest.mark.rounding
def test_part_centres_are_the_originals(nudge):
    f = load("evaluation")
    for split in ("train", "test"):
        # The original sums float32 maps; ours in float64.
        got = centres(split, nudge)
        np.testing.assert_allclose(got, f.arrays[f"{split}.centers"], atol=2e-4)


@pytest.mark.rounding
def test_regression_errors_are_the_originals(nudge):
    f = load("evaluation")
    err_train, err_test = landmark_regression_error(
        centres("train", nudge),
        f.arrays["train.landmarks"],
        centres("test", nudge),
        f.arrays["test.landmarks"],
    )
    np.testing.assert_allclose(
        [err_train, err_test], [f.arrays["error_train"], f.arrays["error_test"]], rtol=3e-6
    )


@pytest.mark.rounding
def test_regression_on_the_originals_centres_is_exact():
    f = load("evaluation")
    a = f.arrays
    err_train, err_test = landmark_regression_error(
        a["train.centers"], a["train.landmarks"], a["test.centers"], a["test.landmarks"]
    )
    np.testing.assert_allclose(
        [err_train, err_test], [a["error_train"], a["error_test"]], rtol=1e-9
    )


def test_scops_eval_scores_an_original_snapshot_with_the_original_protocol(tmp_path, capsys):
    import json

    from test_original_data import write_tree
    from test_original_model import original_state

    from scops_fast.cli.eval import main

    root = tmp_path / "CelebA"
    write_tree(root, load("celeba"))
    names = (root / "MAFL" / "celebA_training.txt").read_text().split()
    (root / "MAFL" / "training.txt").write_text("\n".join(names) + "\n")
    (root / "MAFL" / "testing.txt").write_text("\n".join(names[:3]) + "\n")
    snapshot = tmp_path / "model_100000.pth"
    torch.save(original_state("resnet50"), snapshot)
    argv = ["--checkpoint", str(snapshot), "--data", "celeba", "--root", str(root), "--size", "48"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint_format"] == "original" and out["num_parts"] == 8
    assert out["data"]["protocol"] == "original"
    # The face-area filter dropped one image of each list.
    assert out["model"]["n_train"] == 4 and out["model"]["n_test"] == 2
    assert {"keypoint_nmi", "keypoint_fg_nmi", "landmark_error_test"} <= set(out["model"])


def test_scops_eval_reads_cub_as_the_original(tmp_path, capsys):
    import json

    from test_original_data import write_cub
    from test_original_model import original_state

    from scops_fast.cli.eval import main

    root, cache, _ = write_cub(tmp_path)
    snapshot = tmp_path / "model_60000.pth"
    torch.save(original_state("resnet101"), snapshot)
    argv = ["--checkpoint", str(snapshot), "--data", "cub", "--root", str(root)]
    argv += ["--cub-cache", str(cache), "--no-regression", "--size", "32", "--net-size", "32"]
    assert main(argv + ["--cub-subset", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"]["protocol"] == "original" and out["model"]["n_test"] == 1
    assert out["num_parts"] == 4 and "keypoint_nmi" in out["model"]
    assert main(argv[:-7] + ["--no-regression"]) == 2
    assert "--cub-cache" in capsys.readouterr().err
