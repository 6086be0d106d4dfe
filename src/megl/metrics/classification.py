"""Classification metrics: accuracy and macro precision / recall / F1 over every class of the label mapping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from megl.errors import MEGLError


def _as_labels(values: Sequence[int] | np.ndarray, name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MEGLError(f"classification metrics: {name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise MEGLError(f"classification metrics: {name} must hold integer class ids, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_classes)) if arr.size else np.array([], dtype=int)
    if bad.size:
        i = int(bad[0])
        raise MEGLError(
            f"classification metrics: {name}[{i}] = {arr[i]} is outside the label mapping 0..{num_classes - 1}"
        )
    return arr.astype(np.int64)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in float64, 0 where den is 0 (sklearn's _prf_divide with zero_division=0)."""
    mask = den == 0
    den = np.asarray(den, dtype=np.float64).copy()
    den[mask] = 1
    out = np.asarray(num, dtype=np.float64) / den
    out[mask] = 0.0
    return out


def macro_prf(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over classes 0..num_classes-1, bit for bit sklearn's
    precision_recall_fscore_support(labels=range(K), average="macro", zero_division=0) (version in
    requirements.lock; tests/test_metrics_classification.py compares them). A prediction outside
    0..K-1 (an unanswered MLLM sample, -1) counts for no class's precision.

    Hand-written because importing sklearn costs each job ~1 s of start-up, more than every other
    use of it in a cell; the counts are integers, so only the last divisions and means round."""
    k = int(num_classes)
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    t_in, p_in = (t >= 0) & (t < k), (p >= 0) & (p < k)
    tp = np.bincount(t[t_in & (t == p)], minlength=k)
    pred_sum, true_sum = np.bincount(p[p_in], minlength=k), np.bincount(t[t_in], minlength=k)
    precision, recall = _divide(tp, pred_sum), _divide(tp, true_sum)
    f1 = _divide(2.0 * tp.astype(np.float64), 1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64))
    return float(np.nanmean(precision)), float(np.nanmean(recall)), float(np.nanmean(f1))


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, num_classes: int
) -> dict:
    """Accuracy and macro precision/recall/F1 over classes 0..num_classes-1.

    Every class of the mapping enters the macro average, including classes absent from
    `y_true`; a class with no predictions (or no true samples) scores 0 for the undefined
    ratio (`zero_division=0`). F1 macro is the mean of per-class F1, not F1 of the macro P/R.
    With no samples every score is None.
    """
    if num_classes < 1:
        raise MEGLError(f"classification metrics: num_classes must be >= 1, got {num_classes}")
    t = _as_labels(y_true, "y_true", num_classes)
    p = _as_labels(y_pred, "y_pred", num_classes)
    if t.shape != p.shape:
        raise MEGLError(f"classification metrics: y_true has {t.size} labels but y_pred has {p.size}")
    present = np.unique(t)
    out = {
        "n": int(t.size),
        "num_classes": int(num_classes),
        "n_classes_absent_from_test": int(num_classes - present.size),
    }
    if t.size == 0:
        out.update(accuracy=None, precision_macro=None, recall_macro=None, f1_macro=None)
        return out
    precision, recall, f1 = macro_prf(t, p, num_classes)
    out.update(
        accuracy=float(np.average(t == p)),  # as sklearn's accuracy_score
        precision_macro=float(precision),
        recall_macro=float(recall),
        f1_macro=float(f1),
    )
    return out
