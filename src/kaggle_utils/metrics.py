"""Grading metrics: quadratic weighted kappa (the APTOS 2019 score), thresholds for regression outputs, and
referable-DR screening statistics.

QWK is computed over the fixed classes 0..n_classes-1, like the Kaggle metric: it equals
``sklearn.metrics.cohen_kappa_score(y_true, y_pred, weights="quadratic", labels=range(n_classes))``. Without
``labels``, sklearn only uses the classes present, so with a class missing in both (say grades {0, 1, 4})
it treats 1->4 as one step; the two agree whenever every class occurs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.metrics import roc_auc_score, roc_curve

N_CLASSES = 5
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
REFERABLE_GRADE = 2  # moderate NPDR or worse: the usual referral criterion


# ----------------------------------------------------------------------------------- input checks


def _as_1d(name: str, values: Any) -> np.ndarray:
    """1-D array; (N, 1) model outputs are flattened. Empty input is an error, not a silent nan."""
    arr = np.asarray(values)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _as_scores(name: str, values: Any) -> np.ndarray:
    arr = _as_1d(name, values)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} non-finite value(s) (NaN/inf)")
    return arr


def _as_grades(name: str, values: Any, n_classes: int) -> np.ndarray:
    """Integer grades 0..n_classes-1; 2.0 is fine, 2.5 is an error (threshold it first)."""
    arr = _as_scores(name, values)
    bad = (arr != np.round(arr)) | (arr < 0) | (arr > n_classes - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must hold integer grades 0..{n_classes - 1}; {int(bad.sum())} value(s) do not, "
            f"e.g. {arr[i]:g} at position {i} (use apply_thresholds for continuous predictions)"
        )
    return arr.astype(np.int64)


def _same_length(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"{a_name} has {len(a)} values but {b_name} has {len(b)}")


# ------------------------------------------------------------------------------------------- QWK


def _confusion(t: np.ndarray, p: np.ndarray, n: int, w: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(t * n + p, weights=w, minlength=n * n).reshape(n, n)


def _qwk(t: np.ndarray, p: np.ndarray, n: int, undefined: float, w: np.ndarray | None = None) -> float:
    """Unchecked QWK on int arrays: the threshold optimiser calls this thousands of times."""
    observed = _confusion(t, p, n, w).astype(np.float64)
    if observed.sum() <= 0:
        return float(undefined)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    idx = np.arange(n)
    weights = (idx[:, None] - idx[None, :]) ** 2.0  # the usual /(n-1)² cancels in the ratio
    disagreement = (weights * expected).sum()
    if disagreement == 0:
        return float(undefined)
    return float(1.0 - (weights * observed).sum() / disagreement)


def confusion(y_true: Any, y_pred: Any, n_classes: int = N_CLASSES) -> np.ndarray:
    """(n_classes, n_classes) int counts, rows = true grade, columns = predicted grade."""
    t = _as_grades("y_true", y_true, n_classes)
    p = _as_grades("y_pred", y_pred, n_classes)
    _same_length("y_true", t, "y_pred", p)
    return _confusion(t, p, n_classes)


def _as_weights(values: Any, n: int) -> np.ndarray | None:
    """Non-negative per-sample weights of length ``n``, or None (unweighted)."""
    if values is None:
        return None
    w = _as_scores("sample_weight", values)
    if len(w) != n:
        raise ValueError(f"sample_weight has {len(w)} values but there are {n} samples")
    if (w < 0).any():
        raise ValueError("sample_weight must be non-negative")
    return w


def qwk(y_true: Any, y_pred: Any, n_classes: int = N_CLASSES, undefined: float = 0.0,
        sample_weight: Any = None) -> float:
    """Quadratic weighted kappa over classes 0..n_classes-1.

    ``sample_weight`` weights each image's cell in the confusion matrix (importance weights: QWK as it would
    be on a set with another grade distribution, see :mod:`kaggle_utils.inference.shift`); None is the Kaggle metric.

    Undefined when chance disagreement is zero (both raters give one and the same grade everywhere); sklearn
    then warns and returns nan (``replace_undefined_by``); here it returns ``undefined`` (0.0: no agreement
    beyond chance is shown), so a validation loop never sees nan.
    """
    t = _as_grades("y_true", y_true, n_classes)
    p = _as_grades("y_pred", y_pred, n_classes)
    _same_length("y_true", t, "y_pred", p)
    return _qwk(t, p, n_classes, undefined, _as_weights(sample_weight, len(t)))


# ------------------------------------------------------------------------------------ thresholds


def _as_thresholds(values: Any) -> np.ndarray:
    t = _as_scores("thresholds", values)
    return np.sort(t)


def apply_thresholds(preds: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Continuous predictions -> int grades (``np.digitize``): pred < t0 -> 0, t0 <= pred < t1 -> 1, ...

    Thresholds are sorted first, so an unsorted vector from an optimiser still means something.
    """
    return np.digitize(_as_scores("preds", preds), _as_thresholds(thresholds)).astype(np.int64)


def optimise_thresholds(
    preds: Any,
    y_true: Any,
    init: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    step: float = 0.25,
    restarts: int = 3,
    max_iter: int = 2000,
    sample_weight: Any = None,
) -> np.ndarray:
    """Thresholds maximising QWK of ``apply_thresholds(preds, t)`` against ``y_true`` -> sorted float array.

    Nelder-Mead on -QWK (thresholds sorted inside the objective), restarted ``restarts`` times from the best
    point with a simplex of ``step``, ``step/2``... : QWK is piecewise constant in t, so a simplex that only
    sees one plateau stops at once; scipy's default 5% simplex is too small for that. Deterministic. Never
    worse than ``init`` on the fitted data: the sorted ``init`` is returned unless strictly beaten.
    Fitted thresholds overfit small sets; fit them on out-of-fold predictions. ``sample_weight`` maximises
    the weighted QWK (importance-weighted OOF rows for a shifted test prior: ``shift.prior_shift_thresholds``).
    """
    p = _as_scores("preds", preds)
    x0 = _as_thresholds(init)
    n = len(x0) + 1
    t = _as_grades("y_true", y_true, n)
    _same_length("preds", p, "y_true", t)
    w = _as_weights(sample_weight, len(t))

    def score(x: np.ndarray) -> float:
        return _qwk(t, np.digitize(p, np.sort(x)), n, 0.0, w)

    best_x, best = x0, score(x0)
    for r in range(max(1, restarts)):
        size = step / 2**r
        simplex = np.vstack([best_x, best_x + size * np.eye(len(best_x))])
        res = minimize(
            lambda x: -score(x),
            best_x,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "maxiter": max_iter, "xatol": 1e-4, "fatol": 1e-9},
        )
        cand = np.sort(res.x)
        if score(cand) > best + 1e-12:
            best_x, best = cand, score(cand)
    return np.array(best_x, dtype=np.float64)


# -------------------------------------------------------------------------------- referable DR


def referable_dr(y_true: Any, scores: Any, threshold: float | None = 1.5) -> dict[str, float]:
    """Screening view: referable = grade >= 2, predicted referable = score >= threshold.

    ``scores`` is a continuous expected grade (threshold 1.5 matches ``apply_thresholds`` default: pred >= t1
    means grade >= 2; pass ``fitted[1]`` to match fitted thresholds). ``threshold=None`` picks the Youden-J
    optimum on this data (optimistic; for reporting on the data it came from, say so). AUC is threshold-free.
    Sensitivity/specificity/AUC are nan when a class is absent.
    """
    y = _as_grades("y_true", y_true, N_CLASSES)
    s = _as_scores("scores", scores)
    _same_length("y_true", y, "scores", s)
    positive = y >= REFERABLE_GRADE
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if threshold is None:
        if not (n_pos and n_neg):
            raise ValueError(
                "cannot fit a threshold: y_true needs both referable (>=2) and non-referable grades"
            )
        fpr, tpr, thr = roc_curve(positive, s)
        finite = np.isfinite(thr)
        threshold = float(thr[finite][np.argmax((tpr - fpr)[finite])])
    predicted = s >= threshold
    nan = float("nan")
    return {
        "sensitivity": float((predicted & positive).sum() / n_pos) if n_pos else nan,
        "specificity": float((~predicted & ~positive).sum() / n_neg) if n_neg else nan,
        "auc": float(roc_auc_score(positive, s)) if n_pos and n_neg else nan,
        "threshold": float(threshold),
        "n_pos": n_pos,
        "n_neg": n_neg,
    }
