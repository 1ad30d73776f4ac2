"""Blend out-of-fold predictions, fit thresholds, write the submission (pseudo-label rounds: :mod:`.pseudo`).

Everything here works on DataFrames and arrays (no torch), so it runs in a CPU-only kernel and in tests.
Training writes ``runs/<run>/fold<k>/oof.csv`` (id, grade, pred, fold); a model's OOF is the union of its
folds. Predictions are continuous expected grades in [0, 4]; grades come from thresholds fitted on the
blended OOF (QWK rewards getting the ordering and the cut points right, not the class probabilities).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from kaggle_utils import io, metrics
from kaggle_utils.inference import shift
from kaggle_utils.inference.files import PRED_FILE
from kaggle_utils.training.allocator import keep_freed_memory

DEFAULT_THRESHOLDS = metrics.DEFAULT_THRESHOLDS
THRESHOLD_MODES = ("oof", "prior_shift")  # cut points fitted on OOF as is / reweighted to the estimated test prior
OOF_FILE = "oof.csv"
TEST_FILE = PRED_FILE  # what collect_test reads by default

PathLike = str | os.PathLike
RunSource = PathLike | pd.DataFrame


class EnsembleError(ValueError):
    """Inputs to blending/submission do not line up (ids, shapes, columns); the message says which."""


# --------------------------------------------------------------------------------------------- collecting
def _read_run(src: RunSource, filename: str) -> pd.DataFrame:
    """A run directory (``fold*/<filename>`` concatenated, or ``<filename>`` directly) or a CSV path."""
    if isinstance(src, pd.DataFrame):
        df = src.copy()
        if "id" in df:
            df["id"] = df["id"].astype(str)
        return df
    path = Path(src)
    if path.is_file():
        return io.read_csv(path)
    if path.is_dir():
        if (path / filename).is_file():
            return io.read_csv(path / filename)
        parts = sorted(path.glob(f"fold*/{filename}"))
        if parts:
            return pd.concat([io.read_csv(p) for p in parts], ignore_index=True)
    raise EnsembleError(f"no {filename} found at {path} (expected {path}/fold<k>/{filename} or a CSV file)")


def _as_named(sources: Mapping[str, RunSource] | Sequence[PathLike]) -> dict[str, RunSource]:
    if isinstance(sources, Mapping):
        named = dict(sources)
    else:
        named = {Path(s).name if Path(s).is_dir() else Path(s).stem: s for s in sources}
        if len(named) != len(sources):
            raise EnsembleError(f"two runs share a name in {list(map(str, sources))}; pass a mapping name->run")
    if not named:
        raise EnsembleError("no runs given")
    return named


def _check_ids(tables: dict[str, pd.DataFrame], what: str, allow_missing: bool = False) -> list[str]:
    """Every model must predict exactly the same ids; the error names the ids each model lacks."""
    for name, df in tables.items():
        if "id" not in df or "pred" not in df:
            raise EnsembleError(f"{what} of model {name!r} needs columns id, pred; has {list(df.columns)}")
        dup = df["id"][df["id"].duplicated()].unique()
        if len(dup):
            raise EnsembleError(f"{what} of model {name!r} has duplicated ids (fold overlap?): {list(dup[:10])}")
        if not allow_missing and df["pred"].isna().any():
            bad = list(df.loc[df["pred"].isna(), "id"][:10])
            raise EnsembleError(f"{what} of model {name!r} has missing preds for ids {bad}")
    first, *rest = tables
    ref = set(tables[first]["id"])
    problems = []
    for name in rest:
        ids = set(tables[name]["id"])
        if ids != ref:
            missing, extra = sorted(ref - ids), sorted(ids - ref)
            problems.append(f"{name!r} vs {first!r}: missing {len(missing)} {missing[:10]}, "
                            f"extra {len(extra)} {extra[:10]}")
    if problems:
        raise EnsembleError(f"{what} ids differ between models: " + "; ".join(problems))
    return list(tables[first]["id"])


def collect_oof(runs: Mapping[str, RunSource] | Sequence[PathLike], filename: str = OOF_FILE) -> pd.DataFrame:
    """Wide OOF table ``id, grade, fold, <model>...`` (ordered by the first model's ids).

    ``runs`` maps model name -> run dir / CSV / DataFrame, or is a list of run dirs (named by folder).
    Raises :class:`EnsembleError` when ids or true grades disagree between models.
    """
    tables = {name: _read_run(src, filename) for name, src in _as_named(runs).items()}
    ids = _check_ids(tables, "OOF")
    first = next(iter(tables))
    base = tables[first].set_index("id")
    if "grade" not in base:
        raise EnsembleError(f"OOF of model {first!r} has no grade column")
    out = pd.DataFrame({"id": ids, "grade": base.loc[ids, "grade"].to_numpy()})
    if "fold" in base:
        out["fold"] = base.loc[ids, "fold"].to_numpy().astype(int)
    for name, df in tables.items():
        if name in out.columns:
            raise EnsembleError(f"model name {name!r} clashes with a reserved column; rename the run")
        df = df.set_index("id").loc[ids]
        if "grade" in df and not np.allclose(df["grade"].to_numpy(float), out["grade"].to_numpy(float)):
            bad = list(out["id"][df["grade"].to_numpy(float) != out["grade"].to_numpy(float)][:10])
            raise EnsembleError(f"true grades of {name!r} differ from {first!r} for ids {bad}")
        out[name] = df["pred"].to_numpy(float)
    return out


def collect_test(runs: Mapping[str, RunSource] | Sequence[PathLike], filename: str = TEST_FILE,
                 pred_col: str = "pred") -> pd.DataFrame:
    """Wide test table ``id, <model>...`` from per-run test predictions (``id`` and ``pred_col``, e.g. the
    fold-averaged ``pred`` or one fold's column)."""
    tables = {}
    for name, src in _as_named(runs).items():
        df = _read_run(src, filename)
        if pred_col != "pred" and pred_col in df:
            df = df.drop(columns="pred", errors="ignore").rename(columns={pred_col: "pred"})
        tables[name] = df
    ids = _check_ids(tables, "test predictions", allow_missing=True)  # unreadable images: NaN, fallback later
    out = pd.DataFrame({"id": ids})
    for name, df in tables.items():
        out[name] = df.set_index("id").loc[ids, "pred"].to_numpy(float)
    return out


def true_grades(y: Sequence[float] | np.ndarray) -> np.ndarray:
    """Int grades for QWK; soft (pseudo-label) targets round to the nearest grade."""
    y = np.asarray(y, float)
    if not np.isfinite(y).all():
        raise EnsembleError("true grades contain NaN; score only labelled rows")
    return np.clip(np.rint(y), 0, 4).astype(int)


def model_columns(wide: pd.DataFrame) -> list[str]:
    """Prediction columns of a wide table (everything but id/grade/fold)."""
    return [c for c in wide.columns if c not in ("id", "grade", "fold")]


# ----------------------------------------------------------------------------------------------- blending
def _matrix(preds: pd.DataFrame | np.ndarray) -> np.ndarray:
    p = preds.to_numpy(float) if isinstance(preds, pd.DataFrame) else np.asarray(preds, float)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or not np.isfinite(p).all():
        raise EnsembleError(f"predictions must be a finite (n, m) matrix; got shape {p.shape}")
    return p


def blend(preds: pd.DataFrame | np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Weighted sum of model columns (weights on the simplex keep the blend within [0, 4])."""
    p, w = _matrix(preds), np.asarray(weights, float)
    if w.shape != (p.shape[1],):
        raise EnsembleError(f"{p.shape[1]} model columns but {w.size} weights")
    return p @ w


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _mse_weights(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on the simplex (convex, so SLSQP from equal weights reaches the optimum)."""
    m = p.shape[1]
    res = minimize(lambda w: np.mean((p @ w - y) ** 2), np.full(m, 1.0 / m), method="SLSQP",
                   jac=lambda w: 2.0 * p.T @ (p @ w - y) / len(y), bounds=[(0.0, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                   options={"ftol": 1e-12, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


def blend_score(preds: pd.DataFrame | np.ndarray, y_true: np.ndarray, weights: np.ndarray) -> float:
    """QWK of the blend after thresholds fitted on it: how :func:`fit_blend_weights` ranks weightings."""
    b, y = blend(preds, weights), true_grades(y_true)
    return float(metrics.qwk(y, metrics.apply_thresholds(b, metrics.optimise_thresholds(b, y))))


def fit_blend_weights(oof_preds: pd.DataFrame | np.ndarray, y_true: Sequence[float] | np.ndarray,
                      method: str = "qwk", rounds: int = 2) -> np.ndarray:
    """Non-negative weights summing to 1 for the model columns of ``oof_preds``.

    ``mse``: least squares on the simplex. ``qwk``: start from the MSE weights, then alternate fitting
    thresholds and Nelder-Mead over softmax logits on QWK at those thresholds (QWK is piecewise constant,
    so the start simplex takes unit steps, not the default 5%). The result is the best of {QWK fit, MSE
    fit, equal weights, each single model} by :func:`blend_score`, so on the fitting data it is never worse
    than equal weights or the best single model. No randomness: same inputs, same weights. Fitting on OOF
    overfits it a little; with few models the weights matter less than the thresholds.
    """
    p, y = _matrix(oof_preds), np.asarray(y_true, float)
    if len(y) != len(p):
        raise EnsembleError(f"{len(p)} prediction rows but {len(y)} labels")
    m = p.shape[1]
    if m == 1:
        return np.ones(1)
    w_mse = _mse_weights(p, y)
    if method == "mse":
        return w_mse
    if method != "qwk":
        raise EnsembleError(f"unknown blend method {method!r}; use 'qwk' or 'mse'")

    w, yi = w_mse, true_grades(y)
    for _ in range(rounds):
        thr = metrics.optimise_thresholds(p @ w, yi)

        def loss(z: np.ndarray, thr: np.ndarray = thr) -> float:
            return -float(metrics.qwk(yi, metrics.apply_thresholds(p @ _softmax(z), thr)))

        z0 = np.log(np.clip(w, 1e-6, None))
        simplex = np.vstack([z0, z0 + np.eye(m)])
        res = minimize(loss, z0, method="Nelder-Mead",
                       options={"initial_simplex": simplex, "maxiter": 150 * m, "xatol": 1e-3, "fatol": 1e-6})
        w = _softmax(res.x) if res.fun <= loss(z0) else w

    candidates = [w, w_mse, np.full(m, 1.0 / m), *np.eye(m)]
    scores = [blend_score(p, y, c) for c in candidates]
    best = candidates[int(np.argmax(scores))]  # first of the tied: the fitted weights win ties
    return best / best.sum()


def fit_thresholds(blended_oof: Sequence[float] | np.ndarray, y_true: Sequence[float] | np.ndarray,
                   init: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Cut points on the blended OOF that maximise QWK (delegates to :func:`metrics.optimise_thresholds`)."""
    return np.asarray(metrics.optimise_thresholds(np.asarray(blended_oof, float), true_grades(y_true),
                                                  init=tuple(init)), float)


# --------------------------------------------------------------------------------------------- submission
def preds_by_id(test_ids: list[str], preds: object) -> np.ndarray:
    """Align predictions to ``test_ids``: a Series/Mapping keyed by id, a DataFrame (id, pred), or an array."""
    if isinstance(preds, pd.DataFrame):
        if "id" not in preds or "pred" not in preds:
            raise EnsembleError(f"prediction table needs columns id, pred; has {list(preds.columns)}")
        preds = pd.Series(preds["pred"].to_numpy(float), index=preds["id"].astype(str))
    if isinstance(preds, Mapping):
        preds = pd.Series(preds, dtype=float)
    if isinstance(preds, pd.Series):
        s = preds.copy()
        s.index = s.index.astype(str)
        if s.index.duplicated().any():
            raise EnsembleError(f"predictions repeat ids: {list(s.index[s.index.duplicated()][:10])}")
        return s.reindex(test_ids).to_numpy(float)
    arr = np.asarray(preds, float).ravel()
    if len(arr) != len(test_ids):
        raise EnsembleError(f"{len(arr)} predictions for {len(test_ids)} test ids; pass a Series keyed by id")
    return arr


def make_submission(test_ids: Sequence[str] | pd.Series, preds: object,
                    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
                    fallback: int | None = None) -> pd.DataFrame:
    """``id_code, diagnosis`` in the order of ``test_ids`` (the competition's test.csv order).

    Ids with no (or NaN) prediction — images that failed to read — raise, unless ``fallback`` (a grade 0-4,
    e.g. the OOF mode) is given; then they get it and a warning names how many. Ids in ``preds`` but not in
    ``test_ids`` are ignored.
    """
    ids = [str(i) for i in test_ids]
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
        raise EnsembleError(f"test ids repeat: {list(dup[:10])}")
    values = preds_by_id(ids, preds)
    missing = ~np.isfinite(values)
    grades = np.zeros(len(ids), dtype=int)
    grades[~missing] = metrics.apply_thresholds(values[~missing], np.asarray(thresholds, float))
    if missing.any():
        bad = [ids[i] for i in np.flatnonzero(missing)]
        if fallback is None:
            raise EnsembleError(f"{len(bad)} test ids have no prediction: {bad[:10]}; "
                                f"re-run inference or pass fallback=<grade>")
        if int(fallback) not in range(5):
            raise EnsembleError(f"fallback must be a grade 0-4, got {fallback!r}")
        warnings.warn(f"{len(bad)} test ids get fallback grade {fallback}: {bad[:10]}", stacklevel=2)
        grades[missing] = int(fallback)
    return pd.DataFrame({"id_code": ids, "diagnosis": np.clip(grades, 0, 4).astype(int)})


def fallback_grade(grades: Sequence[float] | np.ndarray) -> int:
    """Most common training grade (smallest on ties): the least-damaging guess for an unreadable image."""
    g = np.rint(np.asarray(grades, float)).astype(int)
    return int(np.bincount(np.clip(g, 0, 4), minlength=5).argmax())


def write_submission(df: pd.DataFrame, path: PathLike = "submission.csv") -> Path:
    """Validate (columns, unique ids, int grades 0-4) and write atomically."""
    if list(df.columns) != ["id_code", "diagnosis"]:
        raise EnsembleError(f"submission columns must be ['id_code', 'diagnosis'], got {list(df.columns)}")
    if df["id_code"].duplicated().any():
        raise EnsembleError(f"submission repeats ids: {list(df['id_code'][df['id_code'].duplicated()][:10])}")
    d = df["diagnosis"]
    if not pd.api.types.is_integer_dtype(d) or d.isna().any() or not d.between(0, 4).all():
        raise EnsembleError("submission diagnosis must be integers 0-4 with no missing values")
    return io.write_csv(path, df)


@dataclass
class BlendResult:
    """What :func:`blend_runs` fitted and produced; ``oof`` and ``test`` carry a ``blend`` column."""

    weights: dict[str, float]
    thresholds: np.ndarray
    oof: pd.DataFrame
    test: pd.DataFrame
    submission: pd.DataFrame
    oof_qwk: float
    fallback: int
    threshold_mode: str = "oof"
    thresholds_oof: np.ndarray | None = None
    thresholds_prior_shift: np.ndarray | None = None  # None when no test prediction could estimate a prior
    prior: shift.PriorEstimate | None = None


def blend_runs(oof_runs: Mapping[str, RunSource] | Sequence[PathLike],
               test_runs: Mapping[str, RunSource] | Sequence[PathLike], test_ids: Sequence[str] | pd.Series,
               method: str = "qwk", thresholds: str = "oof", prior_method: str = "em", n_boot: int = 200,
               seed: int = 0) -> BlendResult:
    """Fit blend weights and thresholds on the OOF predictions, apply both to the test predictions.

    Test images without a prediction (unreadable) get the most common OOF grade, with a warning.
    ``thresholds``: ``oof`` (cut points fitted on the OOF predictions: assumes the test set has the training
    grade mix) or ``prior_shift`` (refitted on OOF importance-weighted to the test prior estimated from the
    test predictions by ``prior_method``; no test labels needed). Both sets and the estimate are in the result.
    """
    if thresholds not in THRESHOLD_MODES:
        raise EnsembleError(f"unknown thresholds {thresholds!r}; use one of {THRESHOLD_MODES}")
    keep_freed_memory()  # the prior's bootstrap allocates big temporaries: 1.8x faster without page faults
    oof = collect_oof(oof_runs)
    test = collect_test(test_runs)
    models = model_columns(oof)
    if sorted(models) != sorted(model_columns(test)):
        raise EnsembleError(f"OOF models {models} and test models {model_columns(test)} differ")
    y = true_grades(oof["grade"])
    weights = fit_blend_weights(oof[models], y, method=method)
    oof["blend"] = blend(oof[models], weights)
    thr_oof = fit_thresholds(oof["blend"].to_numpy(), y)
    readable = np.isfinite(test[models].to_numpy(float)).all(axis=1)  # unreadable images stay NaN
    test["blend"] = np.nan
    prior, thr_shift = None, None
    if readable.any():
        test.loc[readable, "blend"] = blend(test.loc[readable, models], weights)
        prior = shift.estimate_prior(y, oof["blend"].to_numpy(), test.loc[readable, "blend"].to_numpy(),
                                     method=prior_method, thresholds=thr_oof, n_boot=n_boot, seed=seed)
        thr_shift = shift.prior_shift_thresholds(oof["blend"].to_numpy(), y, prior.prior, init=thr_oof)
    elif thresholds == "prior_shift":
        warnings.warn("no readable test prediction to estimate the test prior from: using OOF thresholds",
                      stacklevel=2)
    chosen = thr_shift if thresholds == "prior_shift" and thr_shift is not None else thr_oof
    fallback = fallback_grade(y)
    submission = make_submission(test_ids, test.set_index("id")["blend"], chosen, fallback=fallback)
    score = metrics.qwk(y, metrics.apply_thresholds(oof["blend"].to_numpy(), thr_oof))
    return BlendResult(dict(zip(models, map(float, weights), strict=True)), chosen, oof, test,
                       submission, float(score), fallback, thresholds if chosen is thr_shift else "oof",
                       thr_oof, thr_shift, prior)
