import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scops_fast.eval import (
    KMeansPartBaseline,
    PartEvaluator,
    dense_part_nmi_ari,
    evaluate_predictions,
    foreground_iou,
    keypoint_nmi_ari,
    keypoint_part_labels,
    kmeans,
    kmeans_baseline,
    one_part_baseline,
)


def one_hot_maps(labels, k):
    return F.one_hot(labels, k + 1).permute(0, 3, 1, 2).float()


def test_keypoint_labels_read_nearest_pixel_and_skip_invisible_or_outside():
    labels = torch.zeros(1, 4, 6, dtype=torch.long)
    labels[0, 1, 2] = 3
    labels[0, 3, 5] = 2
    kp = torch.tensor([[[2.2, 0.9], [4.6, 2.6], [1.0, 1.0], [9.0, 1.0], [0.0, 0.0]]])
    visible = torch.tensor([[True, True, False, True, True]])
    pred, ids = keypoint_part_labels(one_hot_maps(labels, 3), kp, visible)
    assert pred.tolist() == [3, 2, 0]
    assert ids.tolist() == [0, 1, 4]


def test_keypoint_nmi_ari_perfect_when_each_keypoint_has_its_own_part():
    labels = torch.zeros(3, 8, 8, dtype=torch.long)
    kp = torch.zeros(3, 2, 2)
    for b in range(3):
        labels[b, b, b] = 1
        labels[b, 7 - b, 2] = 2
        kp[b, 0] = torch.tensor([b, b])
        kp[b, 1] = torch.tensor([2, 7 - b])
    assert keypoint_nmi_ari(one_hot_maps(labels, 2), kp) == pytest.approx((1.0, 1.0))
    swapped = labels.clone()
    swapped[labels == 1], swapped[labels == 2] = 2, 1
    assert keypoint_nmi_ari(one_hot_maps(swapped, 2), kp) == pytest.approx((1.0, 1.0))
    one_part = one_hot_maps((labels > 0).long(), 1)
    nmi, ari = keypoint_nmi_ari(one_part, kp)
    assert nmi == 0.0 and ari == 0.0


def test_dense_scores_only_look_inside_the_foreground():
    gt = torch.zeros(1, 6, 6, dtype=torch.long)
    gt[0, :3, :3], gt[0, 3:, 3:] = 1, 2
    pred = gt.clone()
    pred[0, 0, 5] = 1  # a background pixel wrongly labelled: outside fg, must not count
    assert dense_part_nmi_ari(one_hot_maps(pred, 2), gt) == pytest.approx((1.0, 1.0))
    pred[0, 0, 0] = 2  # inside fg: now it counts
    nmi, ari = dense_part_nmi_ari(one_hot_maps(pred, 2), gt)
    assert nmi < 1.0 and ari < 1.0


def test_foreground_iou_by_hand():
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, :2, :] = 1  # 8 pixels
    gt = torch.zeros(2, 4, 4, dtype=torch.bool)
    gt[0, 1:3, :] = True  # 8 pixels, 4 shared -> 4 / 12
    iou, inter, union = foreground_iou(one_hot_maps(pred, 1), gt)
    assert iou.tolist() == pytest.approx([1 / 3, 1.0])  # image 1: both empty
    assert (inter, union) == (4, 12)


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = np.concatenate([c + rng.normal(scale=0.3, size=(100, 2)) for c in centres])
    found, labels = kmeans(pts, 3, seed=1)
    assert np.allclose(np.sort(found, axis=0), np.sort(centres, axis=0), atol=0.1)
    assert len(np.unique(labels[:100])) == 1 and len(np.unique(labels)) == 3


def test_baselines_have_model_layout_and_consistent_labels():
    fg = torch.zeros(2, 16, 16, dtype=torch.bool)
    fg[0, 2:10, 2:12] = True
    fg[1, 6:14, 4:14] = True  # same shape, translated: labels must move with it
    one = one_part_baseline(fg)
    assert one.shape == (2, 2, 16, 16) and torch.equal(one.argmax(1) != 0, fg)
    probs = kmeans_baseline(fg, 4, seed=0)
    assert probs.shape == (2, 5, 16, 16)
    assert torch.allclose(probs.sum(1), torch.ones(2, 16, 16))
    labels = probs.argmax(1)
    assert torch.equal(labels != 0, fg)
    assert torch.equal(labels[0, 2:10, 2:12], labels[1, 6:14, 4:14])
    assert set(labels[fg].unique().tolist()) == {1, 2, 3, 4}
    with pytest.raises(RuntimeError, match="fit"):
        KMeansPartBaseline(3).predict(fg)


def test_saliency_is_thresholded_for_baselines():
    sal = torch.full((1, 8, 8), 0.2)
    sal[0, 2:6, 2:6] = 0.9
    assert int(one_part_baseline(sal)[0, 1].sum()) == 16


def synthetic_predictions(n, k=3, size=24, seed=0, noise=0.0):
    """Square 'objects' at random positions, each split into k vertical stripes as parts;
    landmarks are the stripe centres, so a model predicting the stripes is perfect."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    landmarks = torch.zeros(n, k, 2)
    for b in range(n):
        x0, y0 = (int(v) for v in torch.randint(0, size - 3 * k, (2,), generator=g))
        for p in range(k):
            labels[b, y0 : y0 + 3 * k, x0 + 3 * p : x0 + 3 * p + 3] = p + 1
            landmarks[b, p] = torch.tensor([x0 + 3 * p + 1.0, y0 + (3 * k - 1) / 2])
    probs = one_hot_maps(labels, k) + noise * torch.rand(n, k + 1, size, size, generator=g)
    return probs / probs.sum(1, keepdim=True), landmarks, labels


def test_evaluate_predictions_perfect_model_and_baselines_rank_correctly():
    probs_tr, lm_tr, _ = synthetic_predictions(40, seed=0)
    probs_te, lm_te, parts_te = synthetic_predictions(20, seed=1)
    perfect = evaluate_predictions(probs_tr, lm_tr, probs_te, lm_te, parts_test=parts_te)
    assert perfect["landmark_error_test"] < 1e-6
    for key in ("keypoint_nmi", "keypoint_ari", "part_nmi", "part_ari", "fg_iou", "fg_iou_pooled"):
        assert perfect[key] == pytest.approx(1.0), key
    assert perfect["n_train"] == 40 and perfect["n_test"] == 20

    everywhere_tr = one_part_baseline(torch.ones(40, 24, 24))
    everywhere_te = one_part_baseline(torch.ones(20, 24, 24))
    base = evaluate_predictions(everywhere_tr, lm_tr, everywhere_te, lm_te, parts_test=parts_te)
    assert base["landmark_error_test"] > 0.3
    assert base["keypoint_nmi"] == 0.0 and base["part_ari"] == 0.0
    assert base["fg_iou"] < 0.5

    fg_tr = synthetic_predictions(40, seed=0)[2] > 0
    km = KMeansPartBaseline(3, seed=0).fit(fg_tr)
    kmb = evaluate_predictions(
        km.predict(fg_tr), lm_tr, km.predict(parts_te > 0), lm_te, parts_test=parts_te
    )
    assert kmb["fg_iou"] == pytest.approx(1.0)
    assert kmb["landmark_error_test"] < base["landmark_error_test"]
    assert 0.3 < kmb["part_nmi"] <= 1.0


def test_streaming_evaluator_matches_one_call_and_handles_empty_parts():
    probs_tr, lm_tr, _ = synthetic_predictions(30, seed=2, noise=0.5)
    probs_te, lm_te, parts_te = synthetic_predictions(10, seed=3, noise=0.5)
    whole = evaluate_predictions(probs_tr, lm_tr, probs_te, lm_te, parts_test=parts_te)
    ev = PartEvaluator()
    for s in range(0, 30, 7):
        ev.add_train(probs_tr[s : s + 7], lm_tr[s : s + 7])
    for s in range(0, 10, 3):
        ev.add_test(probs_te[s : s + 3], lm_te[s : s + 3], parts=parts_te[s : s + 3])
    streamed = ev.compute()
    assert streamed.keys() == whole.keys()
    for key in whole:
        assert streamed[key] == pytest.approx(whole[key], rel=1e-9), key

    dead = probs_tr.clone()
    dead[0, 2] = 0.0  # a part with no mass: centred, counted, no NaN
    out = evaluate_predictions(dead, lm_tr, probs_te, lm_te)
    assert out["empty_parts"] == 1 and np.isfinite(out["landmark_error_test"])


def test_evaluate_with_per_image_scales():
    probs_tr, lm_tr, _ = synthetic_predictions(30, seed=4, noise=0.3)
    probs_te, lm_te, _ = synthetic_predictions(10, seed=5, noise=0.3)
    iod = evaluate_predictions(probs_tr, lm_tr, probs_te, lm_te)
    doubled = evaluate_predictions(
        probs_tr,
        lm_tr,
        probs_te,
        lm_te,
        normalizer=(torch.full((30,), 6.0), torch.full((10,), 6.0)),
    )
    # landmarks 0 and 1 are 3 px apart: scale 6 halves the error
    assert doubled["landmark_error_test"] == pytest.approx(iod["landmark_error_test"] / 2)
    with pytest.raises(ValueError, match="scales"):
        PartEvaluator("scales").add_train(probs_tr, lm_tr)


class Oracle:
    """Predicts the ground-truth parts of images it has seen (found by identity)."""

    def __init__(self, *datasets):
        self.known = [(it["img"], it["parts"]) for ds in datasets for it in ds]

    def __call__(self, imgs):
        out = []
        for img in imgs:
            parts = next(p for im, p in self.known if torch.equal(im, img))
            out.append(one_hot_maps(parts[None], 9)[0])
        return torch.stack(out)


def test_evaluate_dataset_on_synthetic_items():
    from scops_fast.data import SyntheticParts
    from scops_fast.eval import evaluate_dataset

    train = [SyntheticParts(40, size=40, seed=0)[i] for i in range(40)]
    test = [SyntheticParts(10, size=40, seed=1)[i] for i in range(10)]
    oracle = Oracle(train, test)
    res = evaluate_dataset(oracle, train, test, batch_size=16)
    assert res["n_train"] == 40 and res["n_test"] == 10
    for key in ("part_nmi", "part_ari", "fg_iou", "keypoint_nmi", "keypoint_ari"):
        assert res[key] == pytest.approx(1.0), key
    assert res["landmark_error_test"] < 0.1

    def everywhere(imgs):
        return one_part_baseline(torch.ones(len(imgs), 20, 20))  # low-res: upsampled

    base = evaluate_dataset(everywhere, train, test, batch_size=16)
    assert base["landmark_error_test"] > 2 * res["landmark_error_test"]
    assert base["part_nmi"] == 0.0 and base["fg_iou"] < 0.6

    hidden = [dict(it, landmarks=it["landmarks"].clone()) for it in test]
    hidden[3]["landmarks"][2] = float("nan")  # an unannotated keypoint, as in CUB
    partial = evaluate_dataset(oracle, train, hidden, batch_size=4)
    assert "landmark_error_test" not in partial and partial["keypoint_nmi"] == pytest.approx(1.0)


def test_foreground_keypoint_and_full_image_part_metrics():
    probs_tr, lm_tr, _ = synthetic_predictions(20, seed=6)
    probs_te, lm_te, parts_te = synthetic_predictions(10, seed=7)
    perfect = evaluate_predictions(probs_tr, lm_tr, probs_te, lm_te, parts_test=parts_te)
    for key in ("keypoint_fg_nmi", "keypoint_fg_ari", "part_nmi_full", "part_ari_full"):
        assert perfect[key] == pytest.approx(1.0), key
    assert perfect["keypoint_on_background"] == 0.0

    # Half the images predicted as background everywhere: the full keypoint metrics count
    # those keypoints as one more cluster; the foreground ones leave them out.
    half = probs_te.clone()
    half[::2] = 0.0
    half[::2, 0] = 1.0
    out = evaluate_predictions(probs_tr, lm_tr, half, lm_te, parts_test=parts_te)
    assert out["keypoint_on_background"] == pytest.approx(0.5)
    assert out["keypoint_fg_nmi"] == pytest.approx(1.0) and out["keypoint_fg_ari"] == pytest.approx(
        1.0
    )
    assert out["keypoint_nmi"] < 0.9 and out["keypoint_ari"] < 0.9
    # Full-image: background pixels predicted right count too, so it beats the fg-only score.
    assert out["part_nmi_full"] > out["part_nmi"]
