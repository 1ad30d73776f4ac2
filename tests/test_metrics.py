import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from kaggle_utils import metrics as M


def _sk_qwk(t, p, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's UndefinedMetricWarning for degenerate draws
        return cohen_kappa_score(t, p, weights="quadratic", **kw)


def test_qwk_matches_sklearn_on_random_inputs():
    rng = np.random.default_rng(0)
    degenerate = full = 0
    for _ in range(150):  # sklearn's per-call validation is slow; 150 draws cover the cases below
        n = int(rng.integers(1, 80))
        classes = rng.choice(5, size=int(rng.integers(1, 6)), replace=False)  # often some classes missing
        prior = rng.dirichlet(np.ones(len(classes)) * 0.5)
        t = rng.choice(classes, n, p=prior)
        p = np.where(rng.random(n) < 0.6, t, rng.choice(classes, n))
        ours = M.qwk(t, p)
        assert ours == pytest.approx(
            _sk_qwk(t, p, labels=list(range(5)), replace_undefined_by=0.0), abs=1e-12
        )
        if len(set(t) | set(p)) == 5:
            full += 1
            assert ours == pytest.approx(_sk_qwk(t, p), abs=1e-12)
        degenerate += len(set(t) | set(p)) == 1
    assert degenerate > 0 and full > 0  # the draws did exercise both


def test_qwk_edge_cases():
    assert M.qwk([2, 2, 2], [2, 2, 2]) == 0.0  # undefined -> 0.0, sklearn gives nan
    assert np.isnan(M.qwk([2, 2, 2], [2, 2, 2], undefined=np.nan))
    assert M.qwk([0, 1, 4], [0, 1, 4]) == 1.0
    assert M.qwk([0, 0, 4, 4], [4, 4, 0, 0]) == pytest.approx(-1.0)
    assert M.qwk([1, 1, 1], [3, 3, 3]) == 0.0  # constant raters: no agreement beyond chance
    # the missing-class convention: sklearn without labels treats 1->4 as a single step
    t, p = [0, 1, 4, 1], [0, 4, 4, 1]
    assert M.qwk(t, p) == pytest.approx(0.625) and _sk_qwk(t, p) == pytest.approx(0.8)
    assert M.qwk(np.array([[0.0], [2.0], [4.0]]), [0, 2, 4]) == 1.0  # (N,1) float grades are fine


@pytest.mark.parametrize(
    "t, p, match",
    [
        ([0, 1], [0], "y_true has 2 values but y_pred has 1"),
        ([], [], "y_true is empty"),
        ([0, 5], [0, 1], r"integer grades 0..4; 1 value\(s\) do not, e.g. 5 at position 1"),
        ([0, 1], [-1, 1], "y_pred must hold integer grades"),
        ([0, 1], [0.5, 1], "use apply_thresholds"),
        ([0, np.nan], [0, 1], "non-finite"),
        (np.zeros((2, 2)), [0, 1], "must be 1-D"),
    ],
)
def test_qwk_rejects_bad_input(t, p, match):
    with pytest.raises(ValueError, match=match):
        M.qwk(t, p)


def test_confusion_matches_sklearn():
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 5, 500), rng.integers(0, 3, 500)
    cm = M.confusion(t, p)
    assert cm.dtype.kind == "i" and cm.shape == (5, 5)
    np.testing.assert_array_equal(cm, confusion_matrix(t, p, labels=range(5)))
    assert M.confusion([1], [1], n_classes=3).tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_apply_thresholds_digitize_semantics():
    preds = [-1.0, 0.49, 0.5, 1.5, 3.49, 3.5, 10.0]
    assert M.apply_thresholds(preds).tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert M.apply_thresholds(preds, [3.5, 0.5, 2.5, 1.5]).tolist() == [0, 0, 1, 2, 3, 4, 4]  # sorted first
    assert M.apply_thresholds(np.array([[0.7], [2.6]]), [1.0]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="preds has 1 non-finite"):
        M.apply_thresholds([1.0, np.nan])


def _skewed(seed: int, n: int = 2000):
    """APTOS-like prior; predictions squash the middle grades and are shifted, so 0.5/1.5/2.5/3.5 is poor."""
    rng = np.random.default_rng(seed)
    y = rng.choice(5, n, p=[0.49, 0.10, 0.27, 0.05, 0.09])
    return y, 4 * (y / 4) ** 1.8 + 0.3 + rng.normal(0, 0.35, n)


def test_optimiser_improves_skewed_regression_and_generalises():
    y, pred = _skewed(0)
    th = M.optimise_thresholds(pred, y)
    assert th.shape == (4,) and np.all(np.diff(th) > 0)
    default = M.qwk(y, M.apply_thresholds(pred))
    fitted = M.qwk(y, M.apply_thresholds(pred, th))
    assert fitted > default + 0.03
    y2, pred2 = _skewed(1)  # fresh draw: the gain is real, not overfitting
    assert M.qwk(y2, M.apply_thresholds(pred2, th)) > M.qwk(y2, M.apply_thresholds(pred2)) + 0.03
    np.testing.assert_array_equal(th, M.optimise_thresholds(pred, y))  # deterministic


def test_optimiser_never_worse_than_init():
    y, _ = _skewed(2, n=400)
    # init already perfect: returned unchanged
    np.testing.assert_array_equal(M.optimise_thresholds(y.astype(float), y), M.DEFAULT_THRESHOLDS)
    rng = np.random.default_rng(3)
    for k in range(5):  # noise predictions and tiny sets, from unsorted starting points
        n = [400, 400, 7, 3, 50][k]
        yk, pk = rng.integers(0, 5, n), rng.normal(2, 1.5, n)
        init = rng.uniform(0, 4, 4)
        th = M.optimise_thresholds(pk, yk, init=init)
        assert np.all(np.diff(th) >= 0)
        assert M.qwk(yk, M.apply_thresholds(pk, th)) >= M.qwk(yk, M.apply_thresholds(pk, init))


def test_optimiser_input_checks():
    with pytest.raises(ValueError, match="preds has 3 values but y_true has 2"):
        M.optimise_thresholds([0.1, 1.2, 2.3], [0, 1])
    with pytest.raises(ValueError, match="integer grades 0..2"):
        M.optimise_thresholds([0.1, 1.2, 3.3], [0, 1, 3], init=[0.5, 1.5])  # 3 classes from 2 thresholds


def test_referable_dr_hand_checked():
    y = [0, 0, 1, 2, 3, 4, 2, 1]  # referable: rows 3, 4, 5, 6
    s = [0.2, 1.6, 1.0, 2.2, 1.4, 3.9, 1.8, 0.4]
    r = M.referable_dr(y, s)
    # at 1.5: TP rows 3, 5, 6 (row 4 missed at 1.4); TN rows 0, 2, 7 (row 1 false alarm at 1.6)
    assert r == {
        "sensitivity": 0.75,
        "specificity": 0.75,
        "auc": 15 / 16,
        "threshold": 1.5,
        "n_pos": 4,
        "n_neg": 4,
    }
    fitted = M.referable_dr(y, s, threshold=None)  # Youden J: 1.8 gives TPR .75 / FPR 0 (J=.75, first max)
    assert fitted["threshold"] == 1.8 and fitted["sensitivity"] == 0.75 and fitted["specificity"] == 1.0


def test_referable_dr_degenerate_and_bad_input():
    r = M.referable_dr([0, 1, 1], [0.1, 0.2, 2.0])
    assert r["n_pos"] == 0 and np.isnan(r["sensitivity"]) and np.isnan(r["auc"]) and r["specificity"] == 2 / 3
    with pytest.raises(ValueError, match="needs both referable"):
        M.referable_dr([0, 1, 1], [0.1, 0.2, 2.0], threshold=None)
    with pytest.raises(ValueError, match="y_true has 2 values but scores has 3"):
        M.referable_dr([0, 2], [0.1, 0.2, 2.0])
    with pytest.raises(ValueError, match="scores is empty"):
        M.referable_dr([0], [])
