import numpy as np
import pytest
import torch

from megl.errors import MEGLError
from megl.metrics.saliency import binarize, iou, minmax, resize_to, saliency_scores


def square(size, r0, c0, side):
    m = np.zeros((size, size), dtype=np.float32)
    m[r0 : r0 + side, c0 : c0 + side] = 1.0
    return m


GT = square(10, 0, 0, 4)  # 16 pixels


def test_iou_two_overlapping_squares():
    pred = square(10, 2, 2, 4)  # overlap rows 2-3 x cols 2-3 = 4 px; union 16 + 16 - 4 = 28
    assert iou(pred > 0, GT > 0) == pytest.approx(4 / 28)
    s = saliency_scores([pred], [GT], threshold=0.5)
    assert s["miou"] == pytest.approx(1 / 7)
    assert s["n"] == 1


def test_iou_empty_union_is_one_and_shape_mismatch_raises():
    z = np.zeros((3, 3), dtype=bool)
    assert iou(z, z) == 1.0
    with pytest.raises(MEGLError, match="different shapes"):
        iou(z, np.zeros((3, 4), dtype=bool))


def test_minmax_and_binarize():
    m = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(minmax(m), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(binarize(m, 0.5), [[False, False], [True, True]])
    assert not binarize(np.full((3, 3), 7.0), 0.5).any()  # constant map localises nothing
    with pytest.raises(MEGLError, match="threshold"):
        binarize(m, 0.0)


def test_resize_path_is_bilinear():
    # 5x5 map with one hot pixel, upsampled to 10x10 (align_corners=False): the 1-D profile is
    # [1, .75, .25, 0, ...], so the 2-D values are (0,0)=1, (0,1)=(1,0)=.75, (1,1)=.5625, rest < .5.
    pred = np.zeros((5, 5), dtype=np.float32)
    pred[0, 0] = 1.0
    up = resize_to(pred, (10, 10))
    assert up.shape == (10, 10)
    assert up[0, 1] == pytest.approx(0.75) and up[1, 1] == pytest.approx(0.5625) and up[0, 2] == pytest.approx(0.25)
    # >= 0.5 keeps a 2x2 block: IoU with the 4x4 gt = 4/16; >= 0.7 drops (1,1): 3/16 (nearest would give 4/16).
    assert saliency_scores([pred], [GT], threshold=0.5)["miou"] == pytest.approx(4 / 16)
    assert saliency_scores([pred], [GT], threshold=0.7)["miou"] == pytest.approx(3 / 16)


def test_threshold_free_scores_perfect_for_identical_lower_for_shifted():
    same = saliency_scores([GT.copy()], [GT])
    assert same["miou"] == 1.0 and same["auprc"] == pytest.approx(1.0) and same["pearson"] == pytest.approx(1.0)
    shifted = saliency_scores([square(10, 2, 2, 4)], [GT])
    assert shifted["auprc"] < 0.9
    assert shifted["pearson"] < 0.5
    # right ranking, skewed values: gt pixels 0.2 (one peak at 1.0), background 0.1. AUPRC is 1 while the
    # min-max >= 0.5 mask keeps only the peak: IoU 1/16.
    skewed = np.where(GT > 0, 0.2, 0.1)
    skewed[0, 0] = 1.0
    s = saliency_scores([skewed], [GT])
    assert s["auprc"] == pytest.approx(1.0)
    assert s["miou"] == pytest.approx(1 / 16)


def test_mean_over_samples_and_torch_input():
    preds = torch.stack([torch.from_numpy(GT), torch.from_numpy(square(10, 2, 2, 4))])
    s = saliency_scores(preds, np.stack([GT, GT]))
    assert s["miou"] == pytest.approx((1 + 1 / 7) / 2)
    assert s["n"] == 2


def test_no_samples_gives_none_not_zero():
    s = saliency_scores([], [])
    assert s["n"] == 0 and s["miou"] is None and s["auprc"] is None and s["pearson"] is None


def test_empty_gt_is_skipped_and_counted():
    s = saliency_scores([GT, GT], [np.zeros((10, 10)), GT])
    assert s["n"] == 1 and s["n_skipped_empty_gt"] == 1 and s["miou"] == 1.0
    s = saliency_scores([GT], [np.zeros((10, 10))])
    assert s["miou"] is None and s["n_skipped_empty_gt"] == 1


def test_bad_input_names_the_sample():
    with pytest.raises(MEGLError, match=r"\[0, 1\].*sample index 1"):
        saliency_scores([GT, GT], [GT, GT * 2])
    with pytest.raises(MEGLError, match="NaN"):
        saliency_scores([np.full((2, 2), np.nan)], [GT])
    with pytest.raises(MEGLError, match="1 predicted maps but 2"):
        saliency_scores([GT], [GT, GT])


def test_average_precision_bitwise_equals_sklearn_incl_ties():
    """The lean AP equals sklearn's average_precision_score to the last bit (ties, all-positive, tiny maps)."""
    from sklearn.metrics import average_precision_score

    from megl.metrics.saliency import average_precision

    rng = np.random.default_rng(0)
    n_cases = 0
    for case in range(3000):
        n = int(rng.integers(1, 300))
        kind = case % 4
        if kind == 0:
            score = rng.random(n)  # distinct scores
        elif kind == 1:
            score = rng.integers(0, 5, n).astype(np.float64)  # heavy ties
        elif kind == 2:
            score = np.round(rng.normal(size=n), 1) * 1e-3  # ties and negatives, small scale
        else:
            score = np.full(n, 0.25)  # one tie group
            score[rng.random(n) < 0.3] = rng.random()
        truth = rng.random(n) < rng.uniform(0.02, 1.0)
        if not truth.any():
            truth[int(rng.integers(n))] = True
        ours = average_precision(truth, score)
        ref = float(average_precision_score(truth, score))
        assert ours == ref, (case, ours, ref)
        n_cases += 1
    assert n_cases == 3000


def test_saliency_scores_ap_equals_sklearn_on_maps():
    from sklearn.metrics import average_precision_score

    from megl.metrics.saliency import sample_scores

    rng = np.random.default_rng(1)
    for _ in range(200):
        pred = rng.random((8, 8)).astype(np.float32)
        gt = (rng.random((32, 32)) < 0.3).astype(np.float64)
        gt[0, 0] = 1.0
        up = resize_to(pred, gt.shape)
        assert sample_scores(pred, gt)["ap"] == float(average_precision_score(gt.ravel() >= 0.5, up.ravel()))
