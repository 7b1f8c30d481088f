import pathlib

import numpy as np
import pytest
import torch

from scops_fast.eval import fit_landmark_regressor, landmark_regression_error, part_centers_pixels

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
MAFL = FIXTURES / "mafl_keypoints.npz"


@pytest.mark.skipif(
    not MAFL.exists(), reason=f"{MAFL} is absent (the shared fixtures folder is not mounted)"
)
def test_reproduces_original_mafl_evaluator():
    d = np.load(MAFL)
    train, test = landmark_regression_error(
        d["train_pred"], d["train_gt"], d["test_pred"], d["test_gt"], normalizer="iod"
    )
    assert round(train * 100, 4) == 3.1962
    assert round(test * 100, 4) == 3.2609


def test_centres_of_point_masses_and_uniform_maps():
    p = torch.zeros(2, 3, 5, 7)
    p[0, 0, 1, 4] = 1.0  # row 1, column 4 -> (x, y) = (4, 1)
    p[0, 1, 4, 0] = 0.25
    p[0, 1, 0, 6] = 0.75  # weighted: x = 0.75 * 6, y = 0.25 * 4
    p[0, 2] = 1.0  # uniform -> image centre ((W-1)/2, (H-1)/2)
    p[1] = 0.5
    c = part_centers_pixels(p)
    assert c.shape == (2, 3, 2)
    assert torch.allclose(c[0, 0], torch.tensor([4.0, 1.0]))
    assert torch.allclose(c[0, 1], torch.tensor([4.5, 1.0]))
    assert torch.allclose(c[0, 2], torch.tensor([3.0, 2.0]))
    assert torch.allclose(c[1], torch.tensor([3.0, 2.0]).expand(3, 2))


def test_centres_use_no_epsilon():
    # With SPEC §2's +1e-3 the tiny map would be pulled toward the image centre.
    p = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    p[0, 0, 3, 5] = 1e-4
    assert part_centers_pixels(p)[0, 0].tolist() == [5.0, 3.0]
    assert torch.isnan(part_centers_pixels(torch.zeros(1, 1, 4, 4))).all()


def test_exact_linear_relation_gives_zero_error():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(200, 4, 2))
    a = rng.normal(size=(8, 10))
    gt = (pred.reshape(200, -1) @ a + 3.0).reshape(200, 5, 2)
    train, test = landmark_regression_error(pred[:150], gt[:150], pred[150:], gt[150:])
    assert train < 1e-10 and test < 1e-10


def test_constant_inputs_predict_the_mean_landmarks():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(50, 3, 2)) + np.array([[0.0, 0], [4, 0], [2, 3]])
    pred = np.ones((50, 2, 2))  # one-part baseline: no information
    predict = fit_landmark_regressor(pred, gt)
    assert np.allclose(predict(pred[:1])[0], gt.mean(0))


def test_error_definition_by_hand():
    # Train set spans a 2-parameter family exactly; test image is off by a known amount.
    pred_tr = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    gt_tr = np.concatenate([pred_tr, pred_tr + [[2.0, 0.0]]], axis=1)  # eyes 2 apart
    pred_te = np.array([[[0.5, 0.5]]])
    gt_te = np.array([[[0.5, 1.5], [2.5, 0.5]]])  # first point off by 1, second by 0, iod |(-2, 1)|
    _, test = landmark_regression_error(pred_tr, gt_tr, pred_te, gt_te)
    assert test == pytest.approx(0.5 / np.sqrt(5.0))
    _, test_scaled = landmark_regression_error(
        pred_tr, gt_tr, pred_te, gt_te, normalizer=(np.ones(4), np.array([4.0]))
    )
    assert test_scaled == pytest.approx(0.5 / 4.0)


def test_zero_interocular_distance_counts_as_zero_error():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(30, 3, 2))
    gt = rng.normal(size=(30, 2, 2))
    gt_te = np.zeros((2, 2, 2))
    gt_te[1] = [[0.0, 0.0], [1.0, 0.0]]
    pred_te = rng.normal(size=(2, 3, 2))
    predict = fit_landmark_regressor(pred, gt)
    err_second = np.linalg.norm(predict(pred_te[1:]) - gt_te[1:], axis=-1).mean()
    _, test = landmark_regression_error(pred, gt, pred_te, gt_te)
    assert test == pytest.approx(err_second / 2)  # image 0 contributes 0, not inf


def test_accepts_tensors_and_validates():
    pred = torch.randn(20, 3, 2)
    gt = torch.randn(20, 2, 2)
    tr, te = landmark_regression_error(pred, gt, pred, gt)
    assert tr == pytest.approx(te)
    with pytest.raises(ValueError, match="iod"):
        landmark_regression_error(pred, gt, pred, gt, normalizer="bbox")
    with pytest.raises(ValueError, match=r"\(N, points, 2\)"):
        landmark_regression_error(pred.reshape(20, 6), gt, pred, gt)
    with pytest.raises(ValueError, match="finite"):
        landmark_regression_error(pred * float("nan"), gt, pred, gt)
    with pytest.raises(ValueError, match="normaliser values"):
        landmark_regression_error(pred, gt, pred, gt, normalizer=(np.ones(20), np.ones(3)))
