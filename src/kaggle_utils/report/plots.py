"""Report tables and figures: per-model/fold QWK, confusion, ROC, curves, prediction spread, prior and shake-up.

Figures are built on :class:`matplotlib.figure.Figure` (Agg canvas when saved), not pyplot, so this never
changes a notebook's backend or leaks open figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from kaggle_utils import GRADE_NAMES, io, metrics
from kaggle_utils.inference import shift
from kaggle_utils.inference.ensemble import DEFAULT_THRESHOLDS, true_grades

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------------- tables
def qwk_at(y: np.ndarray, pred: np.ndarray, thr: Sequence[float]) -> float:
    return float(metrics.qwk(true_grades(y), metrics.apply_thresholds(pred, np.asarray(thr, float))))


def model_table(oof: pd.DataFrame, columns: Sequence[str], thresholds: Mapping[str, Sequence[float]] | None = None,
                weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per prediction column: OOF QWK at 0.5..3.5 and at fitted cut points, RMSE, the cut points, weight."""
    y = true_grades(oof["grade"])
    rows = []
    for col in columns:
        p = oof[col].to_numpy(float)
        thr = (thresholds or {}).get(col)
        thr = np.asarray(metrics.optimise_thresholds(p, y) if thr is None else thr, float)
        rows.append({"model": col, "qwk_default": qwk_at(y, p, DEFAULT_THRESHOLDS), "qwk_fitted": qwk_at(y, p, thr),
                     "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
                     "thresholds": " ".join(f"{t:.3f}" for t in thr),
                     "weight": float((weights or {}).get(col, np.nan))})
    return pd.DataFrame(rows)


def fold_table(oof: pd.DataFrame, columns: Sequence[str], thresholds: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """QWK per fold (rows) and prediction column, each column at its global fitted cut points."""
    if "fold" not in oof:
        return pd.DataFrame(columns=["fold", "n", *columns])
    rows = []
    for fold, part in oof.groupby("fold", sort=True):
        y = part["grade"].to_numpy(float)
        row: dict[str, Any] = {"fold": int(fold), "n": len(part)}
        row.update({c: qwk_at(y, part[c].to_numpy(float), thresholds[c]) for c in columns})
        rows.append(row)
    return pd.DataFrame(rows)


def load_curves(run_dirs: Sequence[PathLike] | PathLike, filename: str = "metrics.csv") -> dict[str, pd.DataFrame]:
    """``{"<run>/fold<k>": metrics.csv}`` for every fold directory under the given run directories."""
    dirs = [run_dirs] if isinstance(run_dirs, str | os.PathLike) else list(run_dirs)
    out: dict[str, pd.DataFrame] = {}
    for run in map(Path, dirs):
        for f in sorted(run.glob(f"fold*/{filename}")) or ([run / filename] if (run / filename).is_file() else []):
            key = f"{run.name}/{f.parent.name}" if f.parent != run else run.name
            out[key] = io.read_csv(f)
    return out


# -------------------------------------------------------------------------------------------------- plots
def save_figure(fig: Figure, path: PathLike) -> Path:
    return io.write_figure(path, fig)


def plot_confusion(y_true: Sequence[int], y_pred: Sequence[int], path: PathLike, title: str = "") -> Path:
    """Counts and row-normalised (recall per true grade) side by side."""
    cm = np.asarray(metrics.confusion(y_true, y_pred), float)
    norm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)
    fig = Figure(figsize=(10, 4.4))
    for ax, mat, fmt, name in zip(fig.subplots(1, 2), (cm, norm), ("{:.0f}", "{:.2f}"),
                                  ("counts", "row-normalised"), strict=True):
        im = ax.imshow(mat, cmap="Blues", vmin=0)
        fig.colorbar(im, ax=ax, fraction=0.046)
        k = mat.shape[0]
        for i in range(k):
            for j in range(k):
                ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center",
                        color="white" if mat[i, j] > mat.max() / 2 else "black", fontsize=9)
        ax.set(xticks=range(k), yticks=range(k), xlabel="predicted grade", ylabel="true grade",
               title=f"{title} {name}".strip())
    return save_figure(fig, path)


def plot_roc(y_true: Sequence[float], scores: Sequence[float], path: PathLike, threshold: float = 1.5) -> Path:
    """ROC for referable DR (grade >= 2) with AUC and the operating point at ``threshold``."""
    st = metrics.referable_dr(y_true, scores, threshold)
    y = np.asarray(y_true, float) >= 2
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, np.asarray(scores, float))
        ax.plot(fpr, tpr, lw=2, label=f"AUC = {st['auc']:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.plot(1 - st["specificity"], st["sensitivity"], "o", c="crimson", ms=8,
            label=f"t={threshold:.2f}: sens {st['sensitivity']:.3f}, spec {st['specificity']:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title="Referable DR (grade >= 2)")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_model_qwk(table: pd.DataFrame, path: PathLike) -> Path:
    """Grouped bars of OOF QWK per model (and blend) at default and fitted cut points."""
    fig = Figure(figsize=(max(5, 1.2 * len(table) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(table))
    for off, col in ((-0.2, "qwk_default"), (0.2, "qwk_fitted")):
        bars = ax.bar(x + off, table[col], width=0.4, label=col)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set(xticks=x, ylabel="OOF QWK", title="OOF QWK per model",
           ylim=(max(0.0, float(np.nanmin(table[["qwk_default", "qwk_fitted"]].to_numpy())) - 0.1), 1.0))
    ax.set_xticklabels(table["model"], rotation=20, ha="right")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_fold_qwk(table: pd.DataFrame, path: PathLike) -> Path:
    """QWK per fold for every prediction column: fold-to-fold spread is the honest error bar."""
    cols = [c for c in table.columns if c not in ("fold", "n")]
    fig = Figure(figsize=(max(5, 1.0 * len(table) + 3), 4))
    ax = fig.subplots()
    x, width = np.arange(len(table)), 0.8 / max(1, len(cols))
    for i, col in enumerate(cols):
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, table[col], width=width, label=col)
    ax.set(xticks=x, xlabel="fold", ylabel="QWK", title="QWK per fold", ylim=(0, 1))
    ax.set_xticklabels([str(f) for f in table["fold"]])
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_training_curves(curves: Mapping[str, pd.DataFrame], path: PathLike) -> Path:
    """Loss (train solid, val dashed) and val QWK against epoch, one colour per run/fold."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_qwk = fig.subplots(1, 2)
    for i, (name, df) in enumerate(curves.items()):
        c = f"C{i % 10}"
        if "train_loss" in df:
            ax_loss.plot(df["epoch"], df["train_loss"], c=c, label=f"{name} train")
        if "val_loss" in df:
            ax_loss.plot(df["epoch"], df["val_loss"], c=c, ls="--", label=f"{name} val")
        if "val_qwk" in df:
            ax_qwk.plot(df["epoch"], df["val_qwk"], c=c, marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_qwk.set(xlabel="epoch", ylabel="val QWK", title="validation QWK")
    for ax in (ax_loss, ax_qwk):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_pred_distribution(y_true: Sequence[float], preds: Sequence[float], path: PathLike,
                           thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Path:
    """Violin of the continuous prediction per true grade with the cut points: overlap = confusion."""
    y, p = np.asarray(y_true, float), np.asarray(preds, float)
    grades = [g for g in range(5) if (y == g).any()]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    data = [p[y == g] for g in grades]
    if data:
        ax.violinplot(data, positions=grades, showmedians=True)
    for t in thresholds:
        ax.axhline(t, ls=":", c="grey", lw=1)
    ax.set(xticks=range(5), xlabel="true grade", ylabel="predicted (continuous)", ylim=(-0.3, 4.3),
           title="prediction by true grade")
    ax.set_xticklabels([f"{g}\n{GRADE_NAMES[g]}\nn={int((y == g).sum())}" for g in range(5)], fontsize=8)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ label shift and shake-up
def plot_prior(prior: shift.PriorEstimate, hists: Mapping[str, np.ndarray], path: PathLike) -> Path:
    """Left: training prior vs estimated test prior (95 % bootstrap bars). Right: the test set's
    predicted-grade shares under each threshold set: what changes when the cut points follow the prior."""
    fig = Figure(figsize=(11, 4))
    ax, ax2 = fig.subplots(1, 2)
    x = np.arange(len(prior.prior))
    ax.bar(x - 0.2, prior.train_prior, width=0.4, label="training (OOF)")
    err = np.vstack([prior.prior - prior.low, prior.high - prior.prior]).clip(min=0)
    ax.bar(x + 0.2, prior.prior, width=0.4, yerr=err, capsize=3, label=f"test, estimated ({prior.method})")
    ax.set(xticks=x, xlabel="grade", ylabel="share", title="grade distribution: train vs estimated test")
    ax.legend(fontsize=8)
    width = 0.8 / max(1, len(hists))
    for i, (name, h) in enumerate(hists.items()):
        share = np.asarray(h, float) / max(1, np.sum(h))
        ax2.bar(x + (i - (len(hists) - 1) / 2) * width, share, width=width, label=name)
    ax2.set(xticks=x, xlabel="predicted grade", ylabel="share of test images",
            title="test predictions under each threshold set")
    ax2.legend(fontsize=8)
    return save_figure(fig, path)


def plot_shakeup(sims: pd.DataFrame, path: PathLike) -> Path:
    """Public vs private QWK per simulated leaderboard, one colour per choice: the cloud's width is the
    shake-up; points across the diagonal from each other are rank flips."""
    fig = Figure(figsize=(11, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    for i, (name, part) in enumerate(sims.groupby("choice", sort=False)):
        ax.scatter(part["public"], part["private"], s=6, alpha=0.4, c=f"C{i % 10}", label=name)
        ax2.hist(part["private"] - part["public"], bins=40, alpha=0.5, color=f"C{i % 10}", label=name)
    lo = float(min(sims["public"].min(), sims["private"].min()))
    hi = float(max(sims["public"].max(), sims["private"].max()))
    ax.plot([lo, hi], [lo, hi], ls=":", c="grey")
    ax.set(xlabel="public QWK", ylabel="private QWK", title="simulated leaderboards")
    ax2.set(xlabel="private - public QWK", ylabel="simulations", title="public -> private move")
    ax.legend(fontsize=7, markerscale=3)
    return save_figure(fig, path)


def plot_fold_thresholds(table: pd.DataFrame, global_thr: Sequence[float], path: PathLike) -> Path:
    """Each fold's own cut points (dots) against the global OOF fit (lines): threshold instability."""
    folds = table[~table["fold"].isin(["sd", "range"])]
    cols = [c for c in table.columns if c.startswith("t")]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    for i, c in enumerate(cols):
        ax.scatter(folds[c], np.full(len(folds), i), s=30, zorder=3)
        ax.axvline(float(global_thr[i]), ls=":", c="grey")
        for _, r in folds.iterrows():
            ax.annotate(str(r["fold"]), (r[c], i), textcoords="offset points", xytext=(0, 6), fontsize=7)
    ax.set(yticks=range(len(cols)), xlabel="cut point (continuous grade)", title="thresholds fitted per fold",
           ylim=(-0.6, len(cols) - 0.4))
    ax.set_yticklabels([f"{k}|{k + 1}" for k in range(len(cols))])
    return save_figure(fig, path)
