"""Label shift, leaderboard shake-up and per-image uncertainty, from predictions alone (numpy/scipy/pandas).

APTOS 2019's train and test sets had different grade distributions, QWK depends on that distribution through
its cut points, and the private leaderboard reshuffled the public one. This module turns those warnings into
numbers:

- **Test prior without labels.** ``bbse``: black-box shift estimation (Lipton et al. 2018): the OOF confusion
  rates ``C[i, j] = P(predicted j | true i)`` mix into the test's predicted-grade histogram, ``q = C^T pi``; solve
  for ``pi`` on the simplex. ``em``: Saerens et al. (2002) EM on per-grade likelihoods of the *continuous*
  prediction, calibrated on OOF by a per-grade Gaussian kernel density (regression heads give no class
  probabilities, and thresholding first throws information away). Both come with a bootstrap interval over
  OOF and test rows.
- **Thresholds for that prior**: QWK cut points refitted on OOF rows importance-weighted by
  ``pi_test[y] / pi_train[y]``, i.e. the expected QWK on a test set with that grade mix.
- **Shake-up**: QWK over random public/private splits of the competition's sizes (rows drawn from OOF, with
  replacement when OOF is smaller), how often a better-on-public choice is worse on private, a bootstrap CI of
  the CV QWK, per-fold thresholds.
- **Per-image uncertainty**: disagreement across folds and TTA views, and a review list ranked by the chance
  that the referable-DR decision (grade >= 2) would flip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import norm

from kaggle_utils import io, metrics
from kaggle_utils.inference.files import PRED_FILE, VIEWS_FILE

N_CLASSES = metrics.N_CLASSES
METHODS = ("em", "bbse")
APTOS_PUBLIC, APTOS_PRIVATE = 1928, 11000  # APTOS 2019 test split (about 15 % / 85 % of 12,928 images)
_GRID = np.linspace(-1.0, 5.0, 601)  # the KDE is tabulated here; test predictions are interpolated


# ------------------------------------------------------------------------------------------------ priors
def _grades(values: Any, n_classes: int = N_CLASSES) -> np.ndarray:
    """Integer grades 0..n_classes-1 from labels or continuous values (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(values, float)), 0, n_classes - 1).astype(int)


def grade_prior(grades: Any, n_classes: int = N_CLASSES, weights: Any = None) -> np.ndarray:
    """Share of each grade 0..n_classes-1 (sums to 1)."""
    g = _grades(grades, n_classes)
    counts = np.bincount(g, weights=weights, minlength=n_classes).astype(float)
    if counts.sum() <= 0:
        raise ValueError("grade_prior needs at least one (positively weighted) grade")
    return counts / counts.sum()


def confusion_rates(y_true: Any, y_pred: Any, n_classes: int = N_CLASSES) -> np.ndarray:
    """``C[i, j] = P(predicted j | true i)``; a grade absent from ``y_true`` gets an all-zero row."""
    cm = metrics.confusion(y_true, y_pred, n_classes).astype(float)
    return cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)


def _simplex_lsq(a: np.ndarray, b: np.ndarray, free: np.ndarray) -> np.ndarray:
    """argmin ||a x - b||^2 over x >= 0, sum x = 1, x = 0 where not ``free`` (SLSQP; 5 unknowns)."""
    k = a.shape[1]
    x0 = np.where(free, 1.0, 0.0) / max(1, int(free.sum()))
    res = minimize(lambda x: float(np.sum((a @ x - b) ** 2)), x0, jac=lambda x: 2.0 * a.T @ (a @ x - b),
                   method="SLSQP", bounds=[(0.0, 1.0 if f else 0.0) for f in free],
                   constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0}],
                   options={"ftol": 1e-12, "maxiter": 500})
    x = np.clip(res.x if res.success else x0, 0.0, None)[:k]
    return x / x.sum()


def bbse_prior(y_oof: Any, pred_grade_oof: Any, pred_grade_test: Any, n_classes: int = N_CLASSES) -> np.ndarray:
    """Black-box shift estimate of the test prior from hard predicted grades (Lipton et al. 2018).

    Under label shift ``P(pred | true)`` is the same in OOF and test, so the test's predicted histogram is
    ``C^T pi``. Solved as least squares on the simplex rather than by ``C^-1`` (which goes negative when a
    grade is rare or confusable); grades absent from OOF get 0.
    """
    c = confusion_rates(y_oof, pred_grade_oof, n_classes)
    q = grade_prior(pred_grade_test, n_classes)
    return _simplex_lsq(c.T, q, c.sum(axis=1) > 0)


@dataclass
class GradeLikelihood:
    """Per-grade density of the continuous OOF prediction, ``p(pred | grade)``: calibration for EM.

    Gaussian kernels with Silverman's bandwidth per grade (at least ``min_bw``: few images of a grade must
    not give spikes), tabulated on a grid. Why a density and not a posterior: under label shift
    ``p(pred | grade)`` is what stays fixed, the posterior does not.
    """

    density: np.ndarray  # (n_classes, len(_GRID)); all-zero rows for grades absent from OOF
    train_prior: np.ndarray

    @classmethod
    def fit(cls, y_oof: Any, pred_oof: Any, n_classes: int = N_CLASSES, min_bw: float = 0.1) -> GradeLikelihood:
        y = _grades(y_oof, n_classes)
        p = np.asarray(pred_oof, float)
        dens = np.zeros((n_classes, len(_GRID)))
        for k in range(n_classes):
            x = p[y == k]
            if len(x) == 0:
                continue
            sd = float(np.std(x)) if len(x) > 1 else 0.0
            bw = max(min_bw, 1.06 * sd * len(x) ** -0.2)
            dens[k] = norm.pdf((_GRID[:, None] - x[None, :]) / bw).sum(axis=1) / (len(x) * bw)
        return cls(dens, grade_prior(y, n_classes))

    def binned(self, pred: Any) -> tuple[np.ndarray, np.ndarray]:
        """(grid likelihoods ``(G, K)``, count of predictions nearest each grid point): EM's sufficient input."""
        p = np.clip(np.asarray(pred, float), _GRID[0], _GRID[-1])
        step = _GRID[1] - _GRID[0]
        counts = np.bincount(np.rint((p - _GRID[0]) / step).astype(int), minlength=len(_GRID))
        keep = counts > 0
        return self(_GRID[keep]), counts[keep]

    def __call__(self, pred: Any) -> np.ndarray:
        """(N, n_classes) likelihoods of each prediction under each grade (floored, never exactly 0)."""
        p = np.clip(np.asarray(pred, float), _GRID[0], _GRID[-1])
        lik = np.stack([np.interp(p, _GRID, d) for d in self.density], axis=1)
        return np.where(self.density.sum(axis=1) > 0, np.maximum(lik, 1e-12), 0.0)


def em_prior(likelihood: np.ndarray, start: Any, weights: Any = None, max_iter: int = 2000,
             tol: float = 1e-8) -> np.ndarray:
    """Saerens-Latinne-Decaestecker EM for the test prior from per-image likelihoods ``(N, K)``.

    E-step: posterior ``pi_k L_ik / sum_j pi_j L_ij``; M-step: the prior is the mean posterior. Starting from
    the training prior, it converges to the maximum-likelihood mixing weights. ``weights``: a count per row
    (rows = bins of the prediction, which makes 13,000 test images cost as much as 600).
    """
    pi = np.asarray(start, float).copy()
    w = np.ones(len(likelihood)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    for _ in range(max_iter):
        post = likelihood * pi
        post /= np.clip(post.sum(axis=1, keepdims=True), 1e-300, None)
        new = w @ post
        if np.abs(new - pi).max() < tol:
            return new / new.sum()
        pi = new
    return pi / pi.sum()


@dataclass
class PriorEstimate:
    """An estimated test prior with its bootstrap interval, beside the training prior."""

    method: str
    prior: np.ndarray
    low: np.ndarray
    high: np.ndarray
    train_prior: np.ndarray
    n_oof: int
    n_test: int
    n_boot: int

    def table(self) -> pd.DataFrame:
        """One row per grade: training share, estimated test share and its 95 % interval."""
        return pd.DataFrame({"grade": np.arange(len(self.prior)), "train_prior": self.train_prior,
                             "test_prior_est": self.prior, "ci_low": self.low, "ci_high": self.high})

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "prior": self.prior.tolist(), "low": self.low.tolist(),
                "high": self.high.tolist(), "train_prior": self.train_prior.tolist(), "n_oof": self.n_oof,
                "n_test": self.n_test, "n_boot": self.n_boot}


def _point_estimate(method: str, y: np.ndarray, p: np.ndarray, q: np.ndarray, thr: np.ndarray) -> np.ndarray:
    if method == "bbse":
        return bbse_prior(y, metrics.apply_thresholds(p, thr), metrics.apply_thresholds(q, thr))
    if method == "em":
        lik = GradeLikelihood.fit(y, p)
        grid_lik, counts = lik.binned(q)
        return em_prior(grid_lik, lik.train_prior, counts)
    raise ValueError(f"unknown prior-estimation method {method!r}; use one of {METHODS}")


def estimate_prior(y_oof: Any, pred_oof: Any, pred_test: Any, method: str = "em",
                   thresholds: Sequence[float] | None = None, n_boot: int = 200, seed: int = 0,
                   level: float = 0.95) -> PriorEstimate:
    """The test set's grade distribution from OOF (labelled) and test (unlabelled) continuous predictions.

    ``thresholds`` (BBSE's hard grades; default 0.5..3.5) should be the ones the submission uses. The
    interval resamples OOF and test rows together (``n_boot`` times, seeded): it covers the calibration's
    noise as well as the test sample's. NaN test predictions (unreadable images) are ignored.
    """
    y = _grades(y_oof)
    p = np.asarray(pred_oof, float)
    q = np.asarray(pred_test, float)
    q = q[np.isfinite(q)]
    if len(q) == 0:
        raise ValueError("estimate_prior needs at least one finite test prediction")
    thr = np.asarray(metrics.DEFAULT_THRESHOLDS if thresholds is None else thresholds, float)
    prior = _point_estimate(method, y, p, q, thr)
    rng = np.random.default_rng(seed)
    boots = np.array([_point_estimate(method, y[i], p[i], q[rng.integers(0, len(q), len(q))], thr)
                      for i in (rng.integers(0, len(y), len(y)) for _ in range(n_boot))]).reshape(-1, len(prior))
    alpha = (1.0 - level) / 2
    low, high = (np.quantile(boots, [alpha, 1 - alpha], axis=0) if n_boot else (prior.copy(), prior.copy()))
    return PriorEstimate(method, prior, low, high, grade_prior(y), len(y), len(q), int(n_boot))


# -------------------------------------------------------------------------------------------- thresholds
def importance_weights(y_oof: Any, target_prior: Any, train_prior: Any = None) -> np.ndarray:
    """``target[y] / train[y]`` per OOF row: reweights OOF to the target grade mix (mean weight 1)."""
    y = _grades(y_oof)
    train = grade_prior(y) if train_prior is None else np.asarray(train_prior, float)
    target = np.asarray(target_prior, float)
    ratio = np.divide(target, train, out=np.zeros_like(target), where=train > 0)
    w = ratio[y]
    return w / w.mean() if w.sum() > 0 else np.ones(len(y))


def prior_shift_thresholds(pred_oof: Any, y_oof: Any, target_prior: Any,
                           init: Sequence[float] = metrics.DEFAULT_THRESHOLDS) -> np.ndarray:
    """QWK cut points for a test set with grade distribution ``target_prior``: Nelder-Mead
    (``metrics.optimise_thresholds``) on the importance-weighted OOF rows. Labels of the test set are never
    needed, only its estimated prior."""
    w = importance_weights(y_oof, target_prior)
    return metrics.optimise_thresholds(pred_oof, np.rint(np.asarray(y_oof, float)), init, sample_weight=w)


def resample_to_prior(y: Any, target_prior: Any, n: int, seed: int = 0) -> np.ndarray:
    """Row indices of ``y`` drawn (with replacement) so the grades follow ``target_prior``: a synthetic label
    shift made of real predictions."""
    y = _grades(y)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.asarray(target_prior, float))
    parts = [rng.choice(np.flatnonzero(y == k), c, replace=True) for k, c in enumerate(counts) if c]
    return rng.permutation(np.concatenate(parts))


# ---------------------------------------------------------------------------------------------- shake-up
def shakeup(y: Any, grades: Mapping[str, Any], n_public: int = APTOS_PUBLIC, n_private: int = APTOS_PRIVATE,
            n_sims: int = 500, seed: int = 0, weights: Any = None) -> pd.DataFrame:
    """QWK on simulated public/private leaderboards: ``sim, choice, public, private``, one row per sim and choice.

    ``grades`` maps a choice (a blend member, a threshold set) to its hard OOF grades; every choice sees the
    same splits, so their differences are paired. With ``n_public + n_private`` at most the OOF size, each
    sim is a random disjoint split; otherwise rows are drawn with replacement (the OOF set as the population).
    ``weights`` (e.g. :func:`importance_weights`) draws rows in proportion, simulating a shifted test set.
    """
    y = _grades(y)
    g = {k: np.asarray(v, int) for k, v in grades.items()}
    n, m = len(y), n_public + n_private
    prob = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    replace = m > n or prob is not None
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sims):
        idx = rng.choice(n, m, replace=True, p=prob) if replace else rng.permutation(n)[:m]
        pub, priv = idx[:n_public], idx[n_public:]
        for name, gr in g.items():
            rows.append((s, name, metrics._qwk(y[pub], gr[pub], N_CLASSES, 0.0),
                         metrics._qwk(y[priv], gr[priv], N_CLASSES, 0.0)))
    out = pd.DataFrame(rows, columns=["sim", "choice", "public", "private"])
    out.attrs["with_replacement"] = replace
    return out


def shakeup_summary(sims: pd.DataFrame) -> pd.DataFrame:
    """Per choice: mean and 5-95 % range of public and private QWK, and the typical public->private move."""
    rows = []
    for name, part in sims.groupby("choice", sort=False):
        pub, priv = part["public"].to_numpy(), part["private"].to_numpy()
        rows.append({"choice": name, "public_mean": pub.mean(), "public_p5": np.quantile(pub, 0.05),
                     "public_p95": np.quantile(pub, 0.95), "private_mean": priv.mean(),
                     "private_p5": np.quantile(priv, 0.05), "private_p95": np.quantile(priv, 0.95),
                     "mean_abs_public_minus_private": np.abs(pub - priv).mean()})
    return pd.DataFrame(rows)


def flip_rates(sims: pd.DataFrame) -> pd.DataFrame:
    """For each pair of choices: how often the one better on public is worse on private (ties excluded)."""
    wide_pub = sims.pivot(index="sim", columns="choice", values="public")
    wide_priv = sims.pivot(index="sim", columns="choice", values="private")
    names = list(dict.fromkeys(sims["choice"]))
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            dpub = (wide_pub[a] - wide_pub[b]).to_numpy()
            dpriv = (wide_priv[a] - wide_priv[b]).to_numpy()
            decided = dpub != 0
            flips = decided & (np.sign(dpub) != np.sign(dpriv))
            rows.append({"a": a, "b": b, "p_a_better_public": float((dpub > 0).mean()),
                         "p_a_better_private": float((dpriv > 0).mean()),
                         "p_public_winner_loses_private": float(flips.sum() / decided.sum()) if decided.any()
                         else float("nan")})
    return pd.DataFrame(rows)


def bootstrap_qwk(y: Any, grades: Any, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """CV QWK with a percentile bootstrap interval over images (the fitted thresholds held fixed)."""
    t = _grades(y)
    g = np.asarray(grades, int)
    rng = np.random.default_rng(seed)
    boots = np.array([metrics._qwk(t[i], g[i], N_CLASSES, 0.0)
                      for i in (rng.integers(0, len(t), len(t)) for _ in range(n_boot))])
    alpha = (1 - level) / 2
    return {"qwk": metrics._qwk(t, g, N_CLASSES, 0.0), "low": float(np.quantile(boots, alpha)),
            "high": float(np.quantile(boots, 1 - alpha)), "sd": float(boots.std()), "n_boot": n_boot}


def fold_thresholds(pred: Any, y: Any, folds: Any) -> pd.DataFrame:
    """Thresholds fitted on each fold alone (``fold, t1..t4, n, qwk``) plus ``sd`` and ``range`` rows: how
    much the cut points move between equally valid samples of the data."""
    p, t, f = np.asarray(pred, float), np.rint(np.asarray(y, float)).astype(int), np.asarray(folds)
    rows = []
    for k in sorted(set(f.tolist())):
        sel = f == k
        thr = metrics.optimise_thresholds(p[sel], t[sel])
        rows.append({"fold": str(k), **{f"t{i + 1}": float(v) for i, v in enumerate(thr)}, "n": int(sel.sum()),
                     "qwk": float(metrics.qwk(t[sel], metrics.apply_thresholds(p[sel], thr)))})
    out = pd.DataFrame(rows)
    cols = [c for c in out.columns if c.startswith("t")]
    if len(out) > 1:
        out = pd.concat([out, pd.DataFrame([{"fold": "sd", **out[cols].std(ddof=1).to_dict()},
                                            {"fold": "range", **(out[cols].max() - out[cols].min()).to_dict()}])],
                        ignore_index=True)
    return out


# ------------------------------------------------------------------------------------- per-image uncertainty
_VIEW_COL = re.compile(r"^pred_fold(\d+)_view(\d+)$")
_FOLD_COL = re.compile(r"^pred_fold(\d+)$")


def view_matrix(preds: pd.DataFrame) -> np.ndarray:
    """(N, folds, views) from ``pred_fold<k>_view<v>`` columns, else (N, folds, 1) from ``pred_fold<k>``,
    else (N, 1, 1) from ``pred``."""
    views = {tuple(map(int, m.groups())): c for c in preds.columns if (m := _VIEW_COL.match(c))}
    if views:
        ks, vs = sorted({k for k, _ in views}), sorted({v for _, v in views})
        return np.stack([np.stack([preds[views[(k, v)]].to_numpy(float) for v in vs], axis=1) for k in ks], axis=1)
    folds = [c for c in preds.columns if _FOLD_COL.match(c)]
    if folds:
        return preds[folds].to_numpy(float)[:, :, None]
    return preds["pred"].to_numpy(float)[:, None, None]


def uncertainty(preds: pd.DataFrame) -> pd.DataFrame:
    """Per image: ``pred`` (mean over folds x views), ``sd_total``, ``sd_folds`` (spread of the fold means),
    ``sd_tta`` (mean spread over views within a fold), ``n_members``. NaN everywhere for unreadable images."""
    v = view_matrix(preds)
    ok = np.isfinite(v).all(axis=(1, 2))
    out = pd.DataFrame({"id": preds["id"].astype(str).to_numpy()})
    with np.errstate(invalid="ignore"):
        flat = v.reshape(len(v), -1)
        out["pred"] = np.where(ok, flat.mean(axis=1), np.nan)
        out["sd_total"] = np.where(ok, flat.std(axis=1), np.nan)
        out["sd_folds"] = np.where(ok, v.mean(axis=2).std(axis=1), np.nan)
        out["sd_tta"] = np.where(ok, v.std(axis=2).mean(axis=1), np.nan)
    out["n_members"] = v.shape[1] * v.shape[2]
    return out


def review_list(unc: pd.DataFrame, thresholds: Sequence[float], floor: float = 0.05,
                near: float = 0.25, top_sd_quantile: float = 0.9) -> pd.DataFrame:
    """Images ranked for a clinician: ``rank, id, pred, grade, referable, dist_referable, sd_*, p_flip, reason``.

    ``p_flip`` = Phi(-|pred - t_12| / max(sd_total, floor)): the chance, if another ensemble member's opinion
    were drawn, that it would land on the other side of the referable cut (between grades 1 and 2). It is
    high for images near the cut *or* with members that disagree, so one ordering covers both. Unreadable
    images come first (nobody graded them). ``reason`` says which criterion fired.
    """
    thr = np.sort(np.asarray(thresholds, float))
    cut = float(thr[metrics.REFERABLE_GRADE - 1])
    df = unc.copy()
    ok = np.isfinite(df["pred"].to_numpy(float))
    dist = (df["pred"] - cut).abs()
    sd = df["sd_total"].fillna(0.0).clip(lower=floor)
    df["grade"] = pd.array([int(g) if o else pd.NA for g, o in
                            zip(np.digitize(df["pred"].fillna(0.0), thr), ok, strict=True)], dtype="Int64")
    df["referable"] = pd.array([bool(p >= cut) if o else pd.NA for p, o in zip(df["pred"], ok, strict=True)],
                               dtype="boolean")
    df["dist_referable"] = dist
    df["p_flip"] = np.where(ok, norm.cdf(-dist / sd), 1.0)
    high_sd = df["sd_total"] >= (np.nanquantile(df["sd_total"], top_sd_quantile) if ok.any() else np.inf)
    reasons = []
    for o, d, h in zip(ok, dist, high_sd, strict=True):
        r = [] if o else ["unreadable"]
        r += ["near referable cut"] if o and d < near else []
        r += ["members disagree"] if o and h and df["sd_total"].notna().any() else []
        reasons.append("; ".join(r))
    df["reason"] = reasons
    df = df.sort_values(["p_flip", "sd_total"], ascending=[False, False], kind="mergesort").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df[["rank", "id", "pred", "grade", "referable", "dist_referable", "sd_total", "sd_folds", "sd_tta",
               "n_members", "p_flip", "reason"]]


def blend_uncertainty(frames: Mapping[str, pd.DataFrame], weights: Mapping[str, float]) -> pd.DataFrame:
    """One uncertainty table for a blend of runs: ``pred`` is the weighted blend of the runs' means, each
    spread the root of the weighted mean variance (runs may have different folds and views, so their members
    cannot be paired). ``frames``: run -> :func:`uncertainty` output (same ids)."""
    names = [n for n in frames if weights.get(n, 0) > 0] or list(frames)
    w = np.array([weights.get(n, 1.0) for n in names], float)
    w = w / w.sum() if w.sum() > 0 else np.full(len(names), 1 / len(names))
    ids = frames[names[0]]["id"].astype(str).tolist()
    aligned = [frames[n].assign(id=frames[n]["id"].astype(str)).set_index("id").loc[ids] for n in names]
    out = pd.DataFrame({"id": ids})
    out["pred"] = sum(wi * f["pred"].to_numpy(float) for wi, f in zip(w, aligned, strict=True))
    for col in ("sd_total", "sd_folds", "sd_tta"):
        out[col] = np.sqrt(sum(wi * f[col].to_numpy(float) ** 2 for wi, f in zip(w, aligned, strict=True)))
    out["n_members"] = sum(int(f["n_members"].iloc[0]) for f in aligned) if len(ids) else 0
    return out


def run_uncertainty(pred_dir: str | os.PathLike, views_file: str = VIEWS_FILE,
                    preds_file: str = PRED_FILE) -> pd.DataFrame:
    """:func:`uncertainty` of one run's test predictions: every fold x TTA view when ``views_file`` exists
    (written by inference), else the fold columns of ``preds_file``."""
    folder = Path(pred_dir)
    path = folder / views_file if (folder / views_file).is_file() else folder / preds_file
    return uncertainty(io.read_csv(path))
