"""Grad-CAM (HiResCAM) overlays for a few OOF images per grade. torch is imported inside the functions only:
the rest of the report runs from CSVs alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kaggle_utils.inference.ensemble import true_grades
from kaggle_utils.report.plots import PathLike, save_figure

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    return save_figure(fig, path)


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

    from kaggle_utils.data.cache import load_cache
    from kaggle_utils.data.dataset import read_rgb
    from kaggle_utils.inference.predict import fold_checkpoints
    from kaggle_utils.training.checkpoint import load_checkpoint, load_model

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
