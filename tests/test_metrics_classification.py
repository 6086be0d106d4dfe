import pytest

from megl.errors import MEGLError
from megl.metrics.classification import classification_metrics

# 3 classes, 6 samples.
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 0, 0]
# By hand: correct at 0, 2, 3 -> accuracy 3/6.
# class 0: predicted at {0,4,5}, TP=1 -> P=1/3; true at {0,1} -> R=1/2; F1 = 2PR/(P+R) = 2/5
# class 1: predicted at {1,2,3}, TP=2 -> P=2/3; true at {2,3} -> R=1;   F1 = 4/5
# class 2: never predicted -> P=0/0 -> 0 (zero_division); R=0/2=0;       F1 = 0
# macro: P=(1/3+2/3+0)/3=1/3, R=(1/2+1+0)/3=1/2, F1=(2/5+4/5+0)/3=2/5


def test_hand_computed_three_classes():
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=3)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision_macro"] == pytest.approx(1 / 3)
    assert m["recall_macro"] == pytest.approx(1 / 2)
    assert m["f1_macro"] == pytest.approx(2 / 5)
    assert m["n"] == 6
    assert m["n_classes_absent_from_test"] == 0


def test_never_predicted_class_scores_zero_without_warning(recwarn):
    m = classification_metrics([0, 1], [0, 0], num_classes=2)
    # class 0: P=1/2 R=1 F1=2/3; class 1 never predicted: P=0 R=0 F1=0
    assert m["precision_macro"] == pytest.approx(0.25)
    assert m["recall_macro"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx(1 / 3)
    assert not [w for w in recwarn if "ill-defined" in str(w.message).lower()]


def test_class_absent_from_test_set_counts_in_macro_average():
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=4)
    # class 3: no true and no predicted samples -> P=R=F1=0 and it still enters the mean over 4 classes.
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["precision_macro"] == pytest.approx(1 / 4)
    assert m["recall_macro"] == pytest.approx(1.5 / 4)
    assert m["f1_macro"] == pytest.approx(1.2 / 4)
    assert m["n_classes_absent_from_test"] == 1


def test_perfect_prediction():
    m = classification_metrics([0, 1, 2], [0, 1, 2], num_classes=3)
    assert m["accuracy"] == m["precision_macro"] == m["recall_macro"] == m["f1_macro"] == 1.0


def test_empty_gives_none_not_zero():
    m = classification_metrics([], [], num_classes=3)
    assert m["n"] == 0
    assert all(m[k] is None for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro"))


@pytest.mark.parametrize(
    "y_true,y_pred,match",
    [([0, 3], [0, 1], r"y_true\[1\] = 3"), ([0, 1], [0, -1], r"y_pred\[1\]"), ([0, 1], [0], "2 labels")],
)
def test_bad_input_raises(y_true, y_pred, match):
    with pytest.raises(MEGLError, match=match):
        classification_metrics(y_true, y_pred, num_classes=3)


def test_macro_prf_and_accuracy_bitwise_equal_sklearn():
    """The NumPy macro P/R/F1 and accuracy equal sklearn's to the last bit: absent classes, classes
    never predicted, unanswered (-1) predictions, one class, many classes."""
    import numpy as np
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    from megl.metrics.classification import classification_metrics, macro_prf

    rng = np.random.default_rng(0)
    for case in range(400):
        k = int(rng.integers(1, 40))
        n = int(rng.integers(1, 200))
        t = rng.integers(0, max(1, k - int(rng.integers(0, k))), n)  # some classes absent from y_true
        p = np.where(rng.random(n) < rng.random(), t, rng.integers(0, k, n))
        labels = list(range(k))
        ref = precision_recall_fscore_support(t, p, labels=labels, average="macro", zero_division=0)[:3]
        assert macro_prf(t, p, k) == tuple(float(x) for x in ref), case
        ours = classification_metrics(t, p, k)
        assert ours["accuracy"] == float(accuracy_score(t, p))
        assert (ours["precision_macro"], ours["recall_macro"], ours["f1_macro"]) == tuple(float(x) for x in ref)
        unanswered = np.where(rng.random(n) < 0.2, -1, p)
        ref = precision_recall_fscore_support(t, unanswered, labels=labels, average="macro", zero_division=0)[:3]
        assert macro_prf(t, unanswered, k) == tuple(float(x) for x in ref), case
