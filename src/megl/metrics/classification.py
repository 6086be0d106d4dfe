"""Classification metrics: accuracy and macro precision / recall / F1 over every class of the label mapping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

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
    precision, recall, f1, _ = precision_recall_fscore_support(
        t, p, labels=list(range(num_classes)), average="macro", zero_division=0
    )
    out.update(
        accuracy=float(accuracy_score(t, p)),
        precision_macro=float(precision),
        recall_macro=float(recall),
        f1_macro=float(f1),
    )
    return out
