"""Out-of-fold evaluation report: summary tables, PNG plots, Grad-CAM overlays, one HTML page.

Figures are built on :class:`matplotlib.figure.Figure` (Agg canvas when saved), not pyplot, so this never
changes a notebook's backend or leaks open figures. torch is imported only inside the Grad-CAM functions:
the rest runs in a CPU-only environment from CSVs alone.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from kaggle_utils import GRADE_NAMES, io, metrics, shift
from kaggle_utils.ensemble import DEFAULT_THRESHOLDS, blend, model_columns, true_grades

PathLike = str | os.PathLike
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLEND = "blend"


# ------------------------------------------------------------------------------------------------- tables
def _qwk(y: np.ndarray, pred: np.ndarray, thr: Sequence[float]) -> float:
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
        rows.append({"model": col, "qwk_default": _qwk(y, p, DEFAULT_THRESHOLDS), "qwk_fitted": _qwk(y, p, thr),
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
        row.update({c: _qwk(y, part[c].to_numpy(float), thresholds[c]) for c in columns})
        rows.append(row)
    return pd.DataFrame(rows)


def load_curves(run_dirs: Sequence[PathLike] | PathLike, filename: str = "metrics.csv") -> dict[str, pd.DataFrame]:
    """``{"<run>/fold<k>": metrics.csv}`` for every fold directory under the given run directories."""
    dirs = [run_dirs] if isinstance(run_dirs, str | os.PathLike) else list(run_dirs)
    out: dict[str, pd.DataFrame] = {}
    for run in map(Path, dirs):
        for f in sorted(run.glob(f"fold*/{filename}")) or ([run / filename] if (run / filename).is_file() else []):
            key = f"{run.name}/{f.parent.name}" if f.parent != run else run.name
            out[key] = pd.read_csv(f)
    return out


# -------------------------------------------------------------------------------------------------- plots
def _save(fig: Figure, path: PathLike) -> Path:
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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def plot_gradcam_grid(examples: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Rows = true grade; each example shown as the image and its Grad-CAM overlay.

    ``examples``: dicts with ``image`` (RGB uint8), ``heatmap`` (HxW in [0, 1]), ``grade``, optional ``id``,
    ``pred`` (from :func:`gradcam_examples`).
    """
    if not examples:
        raise ValueError("plot_gradcam_grid needs at least one example")
    by_grade: dict[int, list[Mapping[str, Any]]] = {}
    for ex in examples:
        by_grade.setdefault(int(ex["grade"]), []).append(ex)
    rows, ncol = sorted(by_grade), max(len(v) for v in by_grade.values())
    fig = Figure(figsize=(2.2 * 2 * ncol, 2.4 * len(rows)))
    axes = np.asarray(fig.subplots(len(rows), 2 * ncol, squeeze=False))
    for ax in axes.ravel():
        ax.axis("off")
    for r, g in enumerate(rows):
        for k, ex in enumerate(by_grade[g]):
            pred = f" pred {float(ex['pred']):.2f}" if ex.get("pred") is not None else ""
            axes[r, 2 * k].imshow(ex["image"])
            axes[r, 2 * k].set_title(f"{ex.get('id', '')}\ngrade {g}{pred}", fontsize=7)
            axes[r, 2 * k + 1].imshow(overlay(ex["image"], ex["heatmap"]))
            axes[r, 2 * k + 1].set_title("Grad-CAM", fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- Grad-CAM
def find_target_layer(model: Any, image_tensor: Any) -> Any:
    """The module that *last* produces a spatial map (4D, H and W > 1): the backbone's final feature map.

    Forward hooks fire when a module finishes, so the last spatial output comes from the outermost module
    that emits the final feature map (``layer4``, the final activation, a ``features`` Sequential), which
    is the classic Grad-CAM target for any backbone. "Last ``nn.Conv2d``" is not: in Inception it is one
    branch of a concatenation, and in registration order a head or squeeze-excitation conv (on a 1x1 map)
    can come last. Pooled (1x1) outputs are skipped.
    """
    import torch

    seen: list[Any] = []

    def hook(mod: Any, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
            seen.append(mod)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(image_tensor)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError(f"{type(model).__name__} has no module with a spatial (N, C, H, W) output; pass target_layer=")
    return seen[-1]


def grad_cam(model: Any, image_tensor: Any, target_layer: Any = None, method: str = "hirescam") -> np.ndarray:
    """Heatmap HxW in [0, 1] of where ``target_layer`` drives the decoded grade ``model.decode(model(x))``.

    ``method="gradcam"``: channel weights = spatially averaged gradients (Selvaraju et al.).
    ``"hirescam"`` (default): gradient x activation element-wise, summed over channels. For a
    global-average-pooled head the two are identical; for GeM or any spatially uneven head only HiResCAM
    shows the locations the output actually depends on. Regressing the expected grade means "what pushes
    the grade up" (a regression output clamped at 0 or 4 falls back to the raw output, whose gradient is not
    zero). All zeros when nothing pushes the grade up. The model's train/eval mode is restored.
    """
    import torch
    import torch.nn.functional as F

    if method not in ("gradcam", "hirescam"):
        raise ValueError(f"unknown CAM method {method!r}; use 'gradcam' or 'hirescam'")
    x = image_tensor if image_tensor.ndim == 4 else image_tensor.unsqueeze(0)
    if x.shape[0] != 1 or x.ndim != 4:
        raise ValueError(f"grad_cam takes one image (1, 3, H, W); got {tuple(image_tensor.shape)}")
    was_training = model.training
    model.eval()
    try:
        layer = target_layer if target_layer is not None else find_target_layer(model, x)
        store: dict[str, Any] = {}
        handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("act", out))
        try:
            with torch.enable_grad():
                x = x.detach().clone().requires_grad_(True)
                out = model(x)
                score = (model.decode(out) if hasattr(model, "decode") else out).sum()
                act = store["act"]
                (grad,) = torch.autograd.grad(score, act, retain_graph=True, allow_unused=True)
                if (grad is None or not grad.any()) and out.numel() == 1:
                    # a regression decode clamps to [0, 4]: outside it the gradient is zero, so use the raw output
                    (grad,) = torch.autograd.grad(out.sum(), act)
                if grad is None:
                    raise ValueError(f"the output does not depend on {type(layer).__name__}; pick another target_layer")
        finally:
            handle.remove()
    finally:
        model.train(was_training)
    act, grad = act.detach()[0], grad.detach()[0]
    if method == "gradcam":
        cam = (grad.mean(dim=(1, 2), keepdim=True) * act).sum(0)
    else:
        cam = (grad * act).sum(0)
    cam = F.interpolate(torch.relu(cam)[None, None].float(), size=tuple(x.shape[-2:]), mode="bilinear",
                        align_corners=False)[0, 0]
    cam = cam.cpu().numpy().astype(np.float64)
    peak = cam.max()
    return np.clip(cam / peak, 0.0, 1.0) if peak > 0 and np.isfinite(peak) else np.zeros_like(cam)


def overlay(image_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heatmap (resized to the image) onto an RGB uint8 image; returns RGB uint8."""
    import cv2
    from matplotlib import colormaps

    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    h = np.nan_to_num(np.asarray(heatmap, np.float32), nan=0.0)
    if h.shape != img.shape[:2]:
        h = cv2.resize(h, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    color = colormaps[cmap](np.clip(h, 0, 1))[..., :3] * 255.0
    out = (1 - alpha) * img[..., :3].astype(np.float32) + alpha * color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_tensor(image_rgb: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> Any:
    """RGB uint8 HxWx3 -> normalised float tensor (1, 3, H, W); mean/std on the 0-1 scale (or 0-255 if > 1)."""
    import torch

    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    img = np.asarray(image_rgb, np.float32)
    if m.max() <= 1.0:
        img = img / 255.0
    return torch.from_numpy(((img - m) / s).transpose(2, 0, 1).copy())[None]


def gradcam_examples(model: Any, images: Sequence[np.ndarray], grades: Sequence[int],
                     ids: Sequence[str] | None = None, target_layer: Any = None,
                     method: str = "hirescam") -> list[dict[str, Any]]:
    """Grad-CAM for each preprocessed RGB image, normalised with the model's mean/std (ImageNet default)."""
    import torch

    mean = np.asarray(getattr(model, "mean", IMAGENET_MEAN), np.float32).ravel()
    std = np.asarray(getattr(model, "std", IMAGENET_STD), np.float32).ravel()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    out = []
    for i, (img, g) in enumerate(zip(images, grades, strict=True)):
        x = to_tensor(img, mean, std).to(device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                o = model(x)
                pred = float((model.decode(o) if hasattr(model, "decode") else o).sum())
        finally:
            model.train(was_training)
        out.append({"id": ids[i] if ids is not None else str(i), "grade": int(g), "pred": pred, "image": img,
                    "heatmap": grad_cam(model, x, target_layer, method)})
    return out


def select_examples(oof: pd.DataFrame, n_per_grade: int = 2, pred_col: str | None = None) -> pd.DataFrame:
    """Deterministic picks per true grade: the best- and worst-predicted first (if ``pred_col``), else first rows."""
    parts = []
    for _, part in oof.groupby("grade", sort=True):
        if pred_col is not None:
            err = (part[pred_col] - part["grade"]).abs()
            order = err.sort_values(kind="mergesort").index
            idx = list(dict.fromkeys([*order[: (n_per_grade + 1) // 2], *order[::-1][: n_per_grade // 2]]))
            parts.append(part.loc[idx[:n_per_grade]])
        else:
            parts.append(part.head(n_per_grade))
    return pd.concat(parts) if parts else oof.head(0)


def gradcam_for_runs(run_dirs: Sequence[PathLike], oof: pd.DataFrame, cache_dir: PathLike,
                     n_per_grade: int = 2) -> list[dict[str, Any]]:
    """Grad-CAM of the first run's models on cached OOF images: each image is explained by the fold model
    that never trained on it, so the map shows what generalised, not what was memorised."""
    import cv2

    from .cache import load_cache
    from .data import read_rgb
    from .infer import fold_checkpoints
    from .train import load_checkpoint, load_model

    run = Path(run_dirs[0])
    col = run.name if run.name in oof.columns else None
    picks = select_examples(oof, n_per_grade, pred_col=col)
    paths = load_cache(cache_dir, check_files=False).set_index("id")["cache_path"]
    checkpoints = [load_checkpoint(p) for p in fold_checkpoints(run)]  # each file read once
    by_fold = {int(ck["config"]["fold"]): ck for ck in checkpoints}
    examples: list[dict[str, Any]] = []
    for fold, part in picks.groupby("fold", sort=True) if "fold" in picks else [(None, picks)]:
        ck = by_fold.get(int(fold), checkpoints[0]) if fold is not None else checkpoints[0]
        model = load_model(ck)
        size = int(ck["config"]["size"])
        images = [cv2.resize(read_rgb(paths[i]), (size, size), interpolation=cv2.INTER_AREA) for i in part["id"]]
        examples += gradcam_examples(model, images, true_grades(part["grade"]), ids=list(part["id"]))
    return sorted(examples, key=lambda e: (e["grade"], e["id"]))


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def _shakeup_choices(oof: pd.DataFrame, cols: Sequence[str], per_thr: Mapping[str, np.ndarray], head: str,
                     thr_sets: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hard OOF grades per competing choice: each blend member at its cut points, the blend at each set."""
    p = oof[head].to_numpy(float)
    out = {c: metrics.apply_thresholds(oof[c].to_numpy(float), per_thr[c]) for c in cols if c != head}
    out.update({f"{head} @{name}": metrics.apply_thresholds(p, t) for name, t in thr_sets.items()})
    return out


def shakeup_section(oof: pd.DataFrame, cols: Sequence[str], per_thr: Mapping[str, np.ndarray], head: str,
                    thr_sets: Mapping[str, np.ndarray], out: Path, sizes: tuple[int, int],
                    n_sims: int, prior: shift.PriorEstimate | None) -> tuple[list[str], dict[str, Path], dict]:
    """HTML, files and summary numbers of the shake-up simulator (see :func:`kaggle_utils.shift.shakeup`)."""
    y = true_grades(oof["grade"])
    grades = _shakeup_choices(oof, cols, per_thr, head, thr_sets)
    sims = shift.shakeup(y, grades, *sizes, n_sims=n_sims, seed=0)
    tabs = {"as OOF": (sims, shift.shakeup_summary(sims), shift.flip_rates(sims))}
    if prior is not None:
        w = shift.importance_weights(y, prior.prior)
        sw = shift.shakeup(y, grades, *sizes, n_sims=n_sims, seed=1, weights=w)
        tabs["at the estimated test prior"] = (sw, shift.shakeup_summary(sw), shift.flip_rates(sw))
    first = f"{head} @oof"
    ci = shift.bootstrap_qwk(y, grades[first], seed=0)
    paths = {"shakeup": plot_shakeup(sims, out / "shakeup.png"),
             "shakeup_csv": io.write_csv(out / "shakeup_sims.csv", sims)}
    body = ["<h2>Shake-up: public vs private leaderboard</h2>",
            f'<p class="sub">{n_sims} simulated leaderboards of {sizes[0]:,} public / {sizes[1]:,} private images '
            f"drawn from the {len(y)} OOF predictions ({'with replacement: OOF is smaller' if sims.attrs['with_replacement'] else 'disjoint random splits'}); "
            "thresholds held fixed. Every choice sees the same draws, so flip rates are paired.</p>",
            '<div class="cards">', _card(ci["qwk"], "CV QWK"),
            _card(ci["low"], "95 % bootstrap CI, low"), _card(ci["high"], "95 % bootstrap CI, high"), "</div>"]
    for name, (_, summ, flips) in tabs.items():
        body += [f"<h3>Sampled {html.escape(name)}</h3>", _table(summ),
                 "<p>Chance that the choice better on public is worse on private:</p>",
                 _table(flips) if len(flips) else "<p>(one choice only)</p>"]
    body.append('<img src="shakeup.png" alt="shake-up">')
    summary = {"cv_qwk_ci": ci, "sizes": list(sizes), "n_sims": n_sims,
               "flip_rates": {k: v[2].to_dict(orient="records") for k, v in tabs.items()},
               "spread": {k: v[1].to_dict(orient="records") for k, v in tabs.items()}}
    if "fold" in oof:
        ft = shift.fold_thresholds(oof[head].to_numpy(float), y, oof["fold"].to_numpy())
        paths["fold_thresholds"] = plot_fold_thresholds(ft, thr_sets["oof"], out / "fold_thresholds.png")
        paths["fold_thresholds_csv"] = io.write_csv(out / "fold_thresholds.csv", ft)
        body += ["<h3>Thresholds fitted per fold</h3>", _table(ft), '<img src="fold_thresholds.png" alt="fold thresholds">']
        summary["fold_thresholds"] = ft.to_dict(orient="records")
    return body, paths, summary


def shift_section(prior: shift.PriorEstimate, test_pred: np.ndarray, thr_sets: Mapping[str, np.ndarray],
                  mode: str, out: Path) -> tuple[list[str], dict[str, Path]]:
    """HTML and files of the label-shift section: prior table, both threshold sets, test histograms."""
    q = np.asarray(test_pred, float)
    q = q[np.isfinite(q)]
    hists = {name: np.bincount(metrics.apply_thresholds(q, t), minlength=5) for name, t in thr_sets.items()}
    rows = [{"thresholds": name, "in use": "yes" if name == mode else "",
             **{f"t{i + 1}": float(v) for i, v in enumerate(t)},
             **{f"n grade {g}": int(h[g]) for g in range(5)}} for (name, t), h in zip(thr_sets.items(),
                                                                                     hists.values(), strict=True)]
    paths = {"prior": plot_prior(prior, hists, out / "prior_shift.png"),
             "prior_csv": io.write_csv(out / "prior_estimate.csv", prior.table())}
    body = ["<h2>Label shift: estimated test grade distribution</h2>",
            f'<p class="sub">Estimated from the {prior.n_test} test predictions alone ({html.escape(prior.method)}; '
            f"95 % interval from {prior.n_boot} bootstrap resamples of OOF and test rows). The "
            "<code>prior_shift</code> cut points are refitted on OOF rows reweighted to this prior.</p>",
            _table(prior.table()), _table(pd.DataFrame(rows)), '<img src="prior_shift.png" alt="prior shift">']
    return body, paths


def review_section(review: pd.DataFrame, out: Path, top: int = 20) -> tuple[list[str], dict[str, Path]]:
    """The ranked list of test images a clinician should look at first (full list in review.csv)."""
    path = io.write_csv(out / "review.csv", review)
    head = review.head(top)
    body = ["<h2>Images to review first</h2>",
            f'<p class="sub">Ranked by <code>p_flip</code>, the chance that another fold or TTA view would put the '
            "image on the other side of the referable-DR cut (grade 1|2): high near the cut or where ensemble "
            f"members disagree. Top {len(head)} of {len(review)}; all in <a href=\"review.csv\">review.csv</a>.</p>",
            _table(head)]
    return body, {"review_csv": path}


# -------------------------------------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em}.sub{color:#666}.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.8em 1.2em;min-width:9em}
.card b{display:block;font-size:1.8em}.card span{color:#666;font-size:.85em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:.3em .7em;text-align:right}
th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4}"""


def _card(value: float, label: str) -> str:
    return f'<div class="card"><b>{value:.3f}</b><span>{html.escape(label)}</span></div>'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", border=0)


def write_report(out_dir: PathLike, oof: pd.DataFrame, *, weights: Mapping[str, float] | None = None,
                 thresholds: Sequence[float] | None = None, curves: Mapping[str, pd.DataFrame] | None = None,
                 gradcam: Sequence[Mapping[str, Any]] | None = None, title: str = "OOF report",
                 notes: str = "", test_pred: Sequence[float] | None = None,
                 prior: shift.PriorEstimate | None = None, threshold_sets: Mapping[str, Sequence[float]] | None = None,
                 threshold_mode: str = "oof", review: pd.DataFrame | None = None,
                 shakeup_sizes: tuple[int, int] = (shift.APTOS_PUBLIC, shift.APTOS_PRIVATE),
                 shakeup_sims: int = 300) -> dict[str, Path]:
    """Write ``report.html`` + PNGs + CSV tables + ``summary.json`` into ``out_dir``; returns name -> path.

    ``oof``: wide table from :func:`ensemble.collect_oof` (id, grade, fold, one column per model; a ``blend``
    column is used as is). With several models and no blend column the blend uses ``weights`` (equal if
    None). ``thresholds``: the blend's cut points (fitted on the blend OOF if None). ``curves``: from
    :func:`load_curves`; ``gradcam``: from :func:`gradcam_examples`. PNGs are separate files next to the
    HTML (referenced relatively), so copy the folder, not just the page.
    Label shift (with ``prior`` and ``test_pred``, the blended test predictions): the estimated test prior and
    each of ``threshold_sets`` (name -> cut points; ``threshold_mode`` names the one in use) with the test's
    predicted-grade histogram. Shake-up (always; ``shakeup_sizes`` = public, private; ``shakeup_sims=0`` skips
    it) and ``review`` (:func:`shift.review_list`), the images to look at first.
    """
    out = Path(out_dir)
    oof = oof.copy()
    models = [c for c in model_columns(oof) if c != BLEND]
    if not models and BLEND not in oof:
        raise ValueError(f"OOF table has no prediction columns: {list(oof.columns)}")
    if BLEND in oof or len(models) == 1:
        cols = [*models, BLEND] if BLEND in oof else models
    else:
        w = np.asarray([(weights or {}).get(m, 1.0 if weights is None else 0.0) for m in models], float)
        if w.sum() <= 0:
            raise ValueError(f"weights {dict(weights or {})} give no weight to any model in {models}")
        weights = dict(zip(models, w / w.sum(), strict=True))
        oof[BLEND] = blend(oof[models], w / w.sum())
        cols = [*models, BLEND]
    head = cols[-1]
    y = true_grades(oof["grade"])
    p = oof[head].to_numpy(float)
    thr = np.asarray(metrics.optimise_thresholds(p, y) if thresholds is None else thresholds, float)

    per_thr = {c: np.asarray(metrics.optimise_thresholds(oof[c].to_numpy(float), y), float) for c in cols[:-1]}
    per_thr[head] = thr
    mtab = model_table(oof, cols, per_thr, weights)
    ftab = fold_table(oof, cols, per_thr)
    hard = np.asarray(metrics.apply_thresholds(p, thr), int)
    ref = metrics.referable_dr(y, p, float(thr[1]))  # the blend's own 1|2 cut: agrees with the grades
    blend_qwk = float(metrics.qwk(y, hard))

    paths: dict[str, Path] = {}
    paths["confusion"] = plot_confusion(y, hard, out / "confusion.png", title=head)
    paths["roc"] = plot_roc(y, p, out / "roc_referable.png", threshold=float(thr[1]))
    paths["model_qwk"] = plot_model_qwk(mtab, out / "model_qwk.png")
    if len(ftab):
        paths["fold_qwk"] = plot_fold_qwk(ftab, out / "fold_qwk.png")
    paths["pred_distribution"] = plot_pred_distribution(y, p, out / "pred_distribution.png", thr)
    if curves:
        paths["curves"] = plot_training_curves(curves, out / "training_curves.png")
    if gradcam:
        paths["gradcam"] = plot_gradcam_grid(gradcam, out / "gradcam.png")
    paths["models_csv"] = io.write_csv(out / "summary_models.csv", mtab)
    paths["folds_csv"] = io.write_csv(out / "summary_folds.csv", ftab)
    summary = {"title": title, "prediction": head, "n": int(len(oof)), "qwk": blend_qwk,
               "qwk_default_thresholds": _qwk(y, p, DEFAULT_THRESHOLDS), "thresholds": thr.tolist(),
               "referable": {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in ref.items()},
               "weights": {k: float(v) for k, v in (weights or {}).items()}}
    sets = {"oof": thr, "0.5..3.5": np.asarray(DEFAULT_THRESHOLDS, float)}
    sets.update({k: np.asarray(v, float) for k, v in (threshold_sets or {}).items()})
    extra: list[str] = []
    if prior is not None and test_pred is not None:
        html_part, files = shift_section(prior, np.asarray(test_pred, float), sets, threshold_mode, out)
        extra += html_part
        paths.update(files)
        summary["prior"] = prior.to_dict()
    summary["threshold_sets"] = {k: v.tolist() for k, v in sets.items()}
    summary["threshold_mode"] = threshold_mode
    summary["thresholds_submission"] = sets.get(threshold_mode, thr).tolist()  # what the test grades used
    if shakeup_sims:
        html_part, files, summary["shakeup"] = shakeup_section(oof, cols, per_thr, head, sets, out, shakeup_sizes,
                                                               shakeup_sims, prior)
        extra += html_part
        paths.update(files)
    if review is not None:
        html_part, files = review_section(review, out)
        extra += html_part
        paths.update(files)
    paths["summary"] = io.write_json(out / "summary.json", summary)

    ref_tab = pd.DataFrame([{"sensitivity": ref["sensitivity"], "specificity": ref["specificity"],
                             "AUC": ref["auc"], "threshold": ref["threshold"],
                             "referable / all": f"{ref['n_pos']} / {ref['n_pos'] + ref['n_neg']}"}])
    img = {k: v.name for k, v in paths.items() if v.suffix == ".png"}

    def figure(key: str, caption: str) -> str:
        return (f'<h2>{html.escape(caption)}</h2><img src="{img[key]}" alt="{html.escape(caption)}">'
                if key in img else "")

    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">{len(oof)} out-of-fold images; grades from <b>{html.escape(head)}</b> with cut points '
        f"{' / '.join(f'{t:.3f}' for t in thr)}. {html.escape(notes)}</p>",
        '<div class="cards">', _card(blend_qwk, f"OOF QWK ({head}, fitted cut points)"),
        _card(summary["qwk_default_thresholds"], "OOF QWK (cut points 0.5..3.5)"),
        _card(ref["sensitivity"], "referable DR sensitivity"), _card(ref["specificity"], "referable DR specificity"),
        _card(ref["auc"], "referable DR AUC"), "</div>",
        '<p class="sub">Cut points (and blend weights, if fitted) come from these same OOF predictions, so the '
        "fitted-cut-point numbers are slightly optimistic; the 0.5..3.5 QWK is the unbiased one. Per-fold QWK "
        "uses each column's global cut points; the spread across folds is the honest error bar.</p>",
        "<h2>Referable DR (grade &ge; 2)</h2>", _table(ref_tab),
        "<h2>Per model</h2>", _table(mtab), figure("model_qwk", "OOF QWK per model"),
        "<h2>Per fold</h2>", _table(ftab) if len(ftab) else "<p>No fold column.</p>",
        figure("fold_qwk", "QWK per fold"),
        figure("confusion", "Confusion matrix"), figure("roc", "ROC, referable DR"),
        figure("pred_distribution", "Predictions by true grade"), figure("curves", "Training curves"),
        figure("gradcam", "Grad-CAM examples per grade"), *extra,
    ]
    files = sorted([*(v.name for v in paths.values()), "report.html"])
    body.append("<h2>Files</h2><ul>" + "".join(f'<li><a href="{f}">{f}</a></li>' for f in files) + "</ul>")
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")
    paths["html"] = io.write_text(out / "report.html", page)
    return paths
