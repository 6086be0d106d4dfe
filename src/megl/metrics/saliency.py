"""Saliency-map agreement with human masks: mIoU after binarisation, plus threshold-free AUPRC and Pearson r.

Protocol (the paper is silent; see docs/metrics.md):
- the predicted map (Grad-CAM of the predicted class, any size) is resized bilinearly to the mask size,
  min-max scaled per map and binarised at >= threshold (default 0.5, `evaluate.miou_threshold`);
- the ground-truth mask (values in [0, 1]) is binarised at >= 0.5 on its raw values;
- samples whose binarised mask is empty have no region to localise and are skipped (counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megl.errors import MEGLError

GT_THRESHOLD = 0.5


def _to_numpy(m, name: str) -> np.ndarray:
    if hasattr(m, "detach"):  # a torch tensor (torch is imported only where a map needs resizing)
        import torch

        m = m.detach().to(torch.float32).cpu().numpy()
    arr = np.asarray(m, dtype=np.float64)
    if arr.ndim != 2:
        raise MEGLError(f"saliency: {name} must be a 2-D map, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise MEGLError(f"saliency: {name} contains NaN or inf")
    return arr


def minmax(m) -> np.ndarray:
    """Scale one map to [0, 1]; a constant map (no localisation) becomes all zeros."""
    arr = _to_numpy(m, "map")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo <= 0.0:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


def binarize(m, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask of pixels whose min-max-scaled value is >= threshold (0 < threshold <= 1)."""
    if not 0.0 < threshold <= 1.0:
        raise MEGLError(f"saliency: threshold must be in (0, 1], got {threshold}")
    return minmax(m) >= threshold


def iou(pred_bin, gt_bin) -> float:
    """Intersection over union of two boolean masks of equal shape; both empty counts as 1.0 (identical sets)."""
    p = np.asarray(pred_bin, dtype=bool)
    g = np.asarray(gt_bin, dtype=bool)
    if p.shape != g.shape:
        raise MEGLError(f"saliency: IoU of masks with different shapes {p.shape} and {g.shape}")
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return 1.0
    return float(np.logical_and(p, g).sum()) / union


def resize_to(m, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=False) of one 2-D map to (H, W)."""
    arr = _to_numpy(m, "map")
    if arr.shape == tuple(size):
        return arr
    # torch's kernel is the reference (a NumPy bilinear differs by ~1e-16, which can flip a binarised pixel);
    # imported here so that scoring maps already at the mask's size never starts torch
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(arr)[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0, 0].numpy()


def average_precision(y_true, y_score) -> float:
    """Average precision of a binary ranking, bit for bit sklearn.metrics.average_precision_score
    (version in requirements.lock; tests/test_metrics_saliency.py compares them on thousands of cases).

    Hand-written because sklearn's input validation (type_of_target, unique labels, array-API
    dispatch) costs ~6x the arithmetic on a 64x64 map, and every test image of every seed scores one.
    The same steps as sklearn's precision_recall_curve: sort by descending score, keep the last
    index of each tied score, count true/false positives there, then the step integral."""
    truth = np.asarray(y_true, dtype=bool).ravel()
    score = np.asarray(y_score, dtype=np.float64).ravel()
    order = np.argsort(score, kind="stable")[::-1]  # ties: any order gives the same counts at group ends
    score, truth = score[order], truth[order]
    idx = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(truth, dtype=np.float64)[idx]
    fps = 1 + idx.astype(np.float64) - tps
    precision = np.r_[(tps / (tps + fps))[::-1], 1.0]  # tps + fps = idx + 1 > 0
    recall = np.r_[(tps / tps[-1])[::-1], 0.0]
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def sample_scores(pred_map, gt_map, threshold: float = 0.5) -> dict | None:
    """IoU, average precision and Pearson r for one sample; None when the binarised mask is empty."""
    gt = _to_numpy(gt_map, "gt map")
    if gt.min() < 0.0 or gt.max() > 1.0:
        raise MEGLError(f"saliency: gt map values must lie in [0, 1], got [{gt.min():.3g}, {gt.max():.3g}]")
    gt_bin = gt >= GT_THRESHOLD
    if not gt_bin.any():
        return None
    pred = resize_to(pred_map, gt.shape)
    pred_bin = binarize(pred, threshold)
    # AP of the raw pixel ranking: threshold-free and invariant to min-max scaling.
    ap = average_precision(gt_bin, pred)
    if pred.std() > 0 and gt.std() > 0:
        r = float(np.corrcoef(pred.ravel(), gt.ravel())[0, 1])
    else:
        r = None  # undefined for a constant map
    return {"iou": iou(pred_bin, gt_bin), "ap": ap, "pearson": r}


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def saliency_scores(
    pred_maps: Sequence | np.ndarray,
    gt_maps: Sequence | np.ndarray,
    threshold: float = 0.5,
) -> dict:
    """Mean IoU, mean AP ('auprc') and mean Pearson r over annotated samples; None (never 0) when none."""
    if len(pred_maps) != len(gt_maps):
        raise MEGLError(f"saliency: {len(pred_maps)} predicted maps but {len(gt_maps)} gt maps")
    per = []
    skipped = 0
    for i, (p, g) in enumerate(zip(pred_maps, gt_maps)):
        try:
            s = sample_scores(p, g, threshold)
        except MEGLError as e:
            raise MEGLError(f"{e} (sample index {i})") from None
        if s is None:
            skipped += 1
        else:
            per.append(s)
    pearsons = [s["pearson"] for s in per]
    return {
        "miou": _mean([s["iou"] for s in per]),
        "auprc": _mean([s["ap"] for s in per]),
        "pearson": _mean(pearsons),
        "n": len(per),
        "n_pearson": sum(r is not None for r in pearsons),
        "n_skipped_empty_gt": skipped,
        "threshold": float(threshold),
    }
