"""Inference: fold checkpoints x TTA -> one continuous prediction per image and run.

A *run* is a folder of fold sub-folders, each with the ``best.pt`` that training wrote. Every checkpoint
carries its model config and the preprocessing recipe it was trained on, so runs of different image sizes
and preprocessing mix freely (the 4th place's ensemble did): images are read once per distinct recipe and
every model sharing that recipe sees the same batch. Image loading runs in background threads (OpenCV
releases the GIL), so decoding overlaps the forward pass. An image that cannot be read still gets a row:
its prediction is NaN and its ``status``/``reason`` say why; blending substitutes a fallback grade. An
image that loads but looks wrong for a fundus photograph (tiny, nearly black, no retina found) is still
graded, and its ``flag`` says why, so a person can look at it (``flagged_images.csv``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

from kaggle_utils import io
from kaggle_utils.data.decode import ImageReadError, read_image
from kaggle_utils.data.preprocess import PreprocessConfig, natural_recipe, preprocess_array, retina_bbox
from kaggle_utils.inference.adapt import adapt_batchnorm, check_mix
from kaggle_utils.inference.files import FAILED_FILE, FLAGGED_FILE, PRED_FILE, VIEWS_FILE
from kaggle_utils.training import precision
from kaggle_utils.training.allocator import keep_freed_memory

TTA_MODES = ("none", "hflip", "d8", "jitter<N>")
TINY_PX = 64  # short side below this (real fundus photographs here: >= 340 px after reduced decoding)
DARK_P99 = 25  # 99th percentile of gray below this: nearly black (real photographs here: >= 78)


class InferenceError(RuntimeError):
    """A run folder or checkpoint that inference cannot use; the message says which and why."""


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """The fold models of one trained run and the recipe they expect."""

    name: str
    folder: Path
    models: list[nn.Module]
    folds: list[int]
    preprocess: PreprocessConfig
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    thresholds: list[list[float]] = field(default_factory=list)


def fold_checkpoints(run_dir: str | os.PathLike, filename: str = "best.pt") -> list[Path]:
    """``run_dir/fold*/best.pt`` (or ``run_dir/best.pt`` for a single-fold run), sorted by fold."""
    run_dir = Path(run_dir)
    found = sorted(run_dir.glob(f"fold*/{filename}"), key=lambda p: _fold_number(p.parent.name))
    if not found and (run_dir / filename).is_file():
        found = [run_dir / filename]
    if not found:
        raise InferenceError(f"no {filename} under {run_dir} (expected {run_dir}/fold<k>/{filename})")
    return found


def _fold_number(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0


def checkpoint_preprocess(ck: dict[str, Any], path: Path) -> PreprocessConfig:
    """The recipe a checkpoint was trained on: stored in it, else beside it, else in its cache folder."""
    if ck.get("preprocess"):
        return PreprocessConfig.from_dict(ck["preprocess"])
    for candidate in (path.parent / "preprocess.json", path.parent.parent / "preprocess.json"):
        if candidate.is_file():
            return PreprocessConfig.from_dict(io.read_json(candidate))
    cache_dir = (ck.get("config") or {}).get("cache_dir")
    if cache_dir and (Path(cache_dir) / "preprocess.json").is_file():
        return PreprocessConfig.from_dict(io.read_json(Path(cache_dir) / "preprocess.json"))
    raise InferenceError(f"{path} does not say how its images were preprocessed (no 'preprocess' entry, "
                         "no preprocess.json beside it); retrain with a current kaggle_utils")


def load_run(run_dir: str | os.PathLike, device: str | torch.device | Sequence[torch.device] = "cpu",
             name: str | None = None) -> Run:
    """Load every fold's best model of a run, in eval mode on ``device`` (a list: fold k on device k mod n, so
    the folds of a run share the GPUs a kernel has)."""
    from kaggle_utils.training.checkpoint import load_checkpoint, load_model

    paths = fold_checkpoints(run_dir)
    models, folds, thresholds, recipes = [], [], [], []
    devices = list(device) if isinstance(device, list | tuple) else [device]
    for k, path in enumerate(paths):
        ck = load_checkpoint(path)
        recipe = checkpoint_preprocess(ck, path)
        recipes.append((recipe, int((ck.get("config") or {}).get("size") or recipe.size)))
        model = load_model(ck, device=devices[k % len(devices)]).to(memory_format=torch.channels_last)
        models.append(model)
        folds.append(int((ck.get("config") or {}).get("fold", _fold_number(path.parent.name))))
        thresholds.append(list(getattr(model, "thresholds", [])))
    if any(r != recipes[0] for r in recipes):
        raise InferenceError(f"the folds of {run_dir} were trained on different preprocessing: {recipes}")
    first = models[0]
    return Run(name or Path(run_dir).name, Path(run_dir), models, folds, *recipes[0],
               tuple(first.mean), tuple(first.std), thresholds)


# ------------------------------------------------------------------------------------------------ TTA


def tta_views(mode: str) -> int:
    """How many views ``mode`` averages over (validates the name)."""
    if mode == "none":
        return 1
    if mode == "hflip":
        return 2
    if mode == "d8":
        return 8
    if mode.startswith("jitter") and mode[6:].isdigit() and int(mode[6:]) > 0:
        return int(mode[6:]) + 1
    raise ValueError(f"unknown TTA mode {mode!r}; expected one of {TTA_MODES}")


def tta_batches(x: torch.Tensor, mode: str, seed: int = 0) -> Iterator[torch.Tensor]:
    """The views of a float [0, 1] batch: identity first, then flips/rotations or colour jitter.

    Jitter draws brightness and contrast factors (+-10 %) from ``seed``, so TTA is deterministic.
    """
    n = tta_views(mode)
    yield x
    if mode == "hflip":
        yield x.flip(-1)
    elif mode == "d8":
        for k in range(8)[1:]:
            view = x.flip(-1) if k >= 4 else x
            yield torch.rot90(view, k % 4, dims=(-2, -1))
    elif n > 1:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n - 1):
            contrast, brightness = (1 + 0.2 * (torch.rand(2, generator=gen) - 0.5)).tolist()
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            yield ((x - mean) * contrast + mean * brightness).clamp(0, 1)


# ----------------------------------------------------------------------------------------- image feed


def quality_flag(img: np.ndarray, cfg: PreprocessConfig) -> str:
    """Why a decoded image (before preprocessing) does not look like a usable fundus photograph, or "".

    The model grades anything; a 30x30 thumbnail or an all-black frame gets a confident grade too, so such
    images are named for a person to check. Reduced-scale decoding keeps the short side >= ``cfg.size``, so a
    short side under ``min(TINY_PX, cfg.size)`` is the file's own size.
    """
    h, w = img.shape[:2]
    if min(h, w) < min(TINY_PX, cfg.size):
        return f"tiny image ({w}x{h} px)"
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    p99 = float(np.percentile(gray[:: max(1, h // 256), :: max(1, w // 256)], 99))
    if p99 < DARK_P99:
        return f"nearly black (99th percentile brightness {p99:.0f}/255)"
    if retina_bbox(img, cfg.crop_tol) is None:
        return "no retina found (no bright region above the border's black level)"
    return ""


def load_test_image(path: str, cfg: PreprocessConfig, size: int) -> tuple[np.ndarray | None, str, str]:
    """Exactly what training saw: the cached recipe, then the training loader's resize to ``size``.
    Returns (image or None, failure reason, quality flag)."""
    try:
        raw = read_image(path, cfg.size if cfg.reduced_decode else None)
        flag = quality_flag(raw, cfg)
        img = preprocess_array(raw, cfg)
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return img, "", flag
    except ImageReadError as err:
        return None, err.reason if hasattr(err, "reason") else str(err), ""
    except Exception as err:  # a decoder crash on one file must not end the run
        return None, f"{type(err).__name__}: {err}", ""


def default_workers() -> int:
    """Loader threads: half the cores. Python-level work in a loader holds the GIL and stalls the forward's
    op dispatch, so on 2 cores one loader keeps end-to-end speed at the forward's (bench/infer.py: 1.00 vs
    0.85 with two)."""
    return max(1, (os.cpu_count() or 2) // 2)


def iter_batches(paths: Sequence[str], cfg: PreprocessConfig, size: int, batch_size: int = 32,
                 workers: int | None = None, prefetch: int = 2
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor, list[str], list[str]]]:
    """Yield (row indices, uint8 NCHW batch, reasons, flags) with loading ``prefetch`` batches ahead in threads.

    Rows that failed to load are in the batch as zeros with a non-empty reason; ``flags`` name loaded images
    that look wrong (:func:`quality_flag`).
    """
    starts = list(range(0, len(paths), batch_size))
    out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def produce() -> None:
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers or default_workers())) as pool:
                for start in starts:
                    idx = np.arange(start, min(start + batch_size, len(paths)))
                    loaded = list(pool.map(lambda i: load_test_image(paths[i], cfg, size), idx))
                    batch = np.zeros((len(idx), size, size, 3), np.uint8)
                    for j, (img, _, _) in enumerate(loaded):
                        if img is not None:
                            batch[j] = img
                    item = (idx, torch.from_numpy(batch).permute(0, 3, 1, 2), [r for _, r, _ in loaded],
                            [f for _, _, f in loaded])
                    while not stop.is_set():
                        try:
                            out.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
        except BaseException as err:  # surface loader crashes in the consumer
            out.put(err)
            return
        out.put(None)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------ predicting


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _devices(device: str | torch.device) -> list[torch.device]:
    """``auto``: every CUDA GPU (a Kaggle T4 x2 kernel has two), else the CPU; anything else: that device."""
    if str(device) == "auto" and torch.cuda.device_count() > 1:
        return [torch.device(f"cuda:{k}") for k in range(torch.cuda.device_count())]
    return [_device(device)]


@torch.no_grad()
def predict_batch(models: Sequence[nn.Module], x_uint8: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float], tta: str = "none", seed: int = 0, per_view: bool = False) -> np.ndarray:
    """(n_models, N) continuous grades for one uint8 NCHW batch, averaged over the TTA views; ``per_view``:
    (n_models, n_views, N) unaveraged (their disagreement is a per-image uncertainty, see kaggle_utils.inference.shift).
    Models on several GPUs each get the batch on their own device; the GPUs then work concurrently (the
    launches are asynchronous, the results are gathered once at the end)."""
    keep_freed_memory()  # no page faults per batch on the CPU (training/allocator.py)
    by_device: dict[torch.device, list[int]] = {}
    for k, model in enumerate(models):
        by_device.setdefault(next(model.parameters()).device, []).append(k)
    out: list[torch.Tensor | None] = [None] * len(models)
    for device, members in by_device.items():
        x = x_uint8.to(device, non_blocking=True).float().div_(255)
        m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=device).view(1, 3, 1, 1)
        prec = precision.resolve(device)  # training's "auto": fp16 on CUDA, fp32 on the CPU
        each = []
        for view in tta_batches(x, tta, seed):
            # channels-last on CPU too: depthwise/grouped convs run 1.3-2.5x faster there (models are
            # converted in load_run); a batch made from HWC arrays is already laid out so
            view = ((view - m) / s).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=prec.dtype, enabled=prec.amp):
                each.append(torch.stack([models[k].decode(models[k](view)).float() for k in members]))
        stacked = torch.stack(each, dim=1)  # (members, views, N) on this device
        for j, k in enumerate(members):
            out[k] = stacked[j]
    result = torch.stack([t.cpu() for t in out]).numpy()  # (n_models, n_views, N)
    return result if per_view else result.mean(axis=1)


def _adapted(models: list[nn.Module], paths: list[str], cfg: PreprocessConfig, size: int, batch_size: int,
             workers: int | None, mix: float, progress: bool) -> list[nn.Module]:
    """``models`` with BatchNorm statistics adapted to the readable images of ``paths`` (inference/adapt.py)."""
    from tqdm.std import tqdm

    if not mix:
        return models
    bar = tqdm(total=len(paths), desc=f"adapt BatchNorm @{size}px", disable=not progress, unit="img")

    def readable() -> Iterator[torch.Tensor]:
        for _, batch, why, _ in iter_batches(paths, cfg, size, batch_size, workers):
            ok = [k for k, reason in enumerate(why) if not reason]
            bar.update(len(why))
            yield batch[ok]

    out = list(models)
    for mean, std in {(tuple(m.mean), tuple(m.std)) for m in models}:
        sel = [k for k, m in enumerate(models) if (tuple(m.mean), tuple(m.std)) == (mean, std)]
        for k, model in zip(sel, adapt_batchnorm([models[k] for k in sel], readable(), mean, std, mix), strict=True):
            out[k] = model
    bar.close()
    return out


def predict_runs(runs: Sequence[Run], table: pd.DataFrame, tta: str = "none", batch_size: int = 32,
                 workers: int | None = None, seed: int = 0, progress: bool = True,
                 adapt_bn: float = 0.0) -> dict[str, pd.DataFrame]:
    """Predict every run on ``table`` (``id, path``); returns run name -> ``id, pred, pred_fold<k>, status, reason,
    flag``.

    ``pred`` is the mean over folds and TTA views; NaN where the image could not be read. ``flag`` is non-empty
    for a graded image that looks wrong (tiny, nearly black, no retina). ``adapt_bn`` > 0 first re-estimates
    the models' BatchNorm statistics on these images (that share of test statistics; inference/adapt.py).
    """
    from tqdm.std import tqdm  # text bar: tqdm.auto warns "IProgress not found" in kernels without ipywidgets

    n_views = tta_views(tta)  # validates ``tta`` before any image is read
    missing = [c for c in ("id", "path") if c not in table.columns]
    if missing:
        raise InferenceError(f"test table lacks column(s) {missing}; columns: {list(table.columns)}")
    ids, paths = table["id"].astype(str).tolist(), table["path"].astype(str).tolist()
    results: dict[str, pd.DataFrame] = {}
    groups: dict[tuple[PreprocessConfig, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.preprocess, run.size), []).append(run)
    for (cfg, size), group in groups.items():
        models = _adapted([m for run in group for m in run.models], paths, cfg, size, batch_size, workers,
                          check_mix(adapt_bn), progress)
        preds = np.full((len(models), len(ids)), np.nan, dtype=np.float64)
        per_view = np.full((len(models), n_views, len(ids)), np.nan, dtype=np.float64)
        reasons, flags = [""] * len(ids), [""] * len(ids)
        bar = tqdm(total=len(ids), desc=f"infer {','.join(r.name for r in group)} @{size}px",
                   disable=not progress, unit="img")
        mean_std = {(tuple(r.mean), tuple(r.std)) for r in group}
        for idx, batch, why, flagged in iter_batches(paths, cfg, size, batch_size, workers):
            for mean, std in mean_std:
                sel = [k for k, m in enumerate(models) if (tuple(m.mean), tuple(m.std)) == (mean, std)]
                one = predict_batch([models[k] for k in sel], batch, mean, std, tta, seed, per_view=True)
                per_view[np.array(sel)[:, None, None], np.arange(n_views)[None, :, None], idx[None, None, :]] = one
                preds[np.array(sel)[:, None], idx[None, :]] = one.mean(axis=1)
            for j, reason, flag in zip(idx, why, flagged, strict=True):
                reasons[j], flags[j] = reason, flag
            bar.update(len(idx))
        bar.close()
        failed = np.array([bool(r) for r in reasons], dtype=bool)  # bool even when empty: an index, not floats
        preds[:, failed] = np.nan
        per_view[:, :, failed] = np.nan
        start = 0
        for run in group:
            members = slice(start, start + len(run.models))
            start += len(run.models)
            fold_preds = preds[members]
            df = pd.DataFrame({"id": ids, "pred": fold_preds.mean(axis=0)})
            for fold, row in zip(run.folds, fold_preds, strict=True):
                df[f"pred_fold{fold}"] = row
            view_cols = {f"pred_fold{fold}_view{v}": views[v]
                         for fold, views in zip(run.folds, per_view[members], strict=True)
                         for v in range(n_views)} if n_views > 1 else {}
            df = df.assign(**view_cols)  # written apart, to VIEWS_FILE, by write_predictions
            df["status"] = np.where(failed, "failed", "ok")
            df["reason"] = reasons
            df["flag"] = flags
            results[run.name] = df
    return results


def write_predictions(results: dict[str, pd.DataFrame], out_dir: str | os.PathLike) -> dict[str, Path]:
    """``out_dir/<run>/test_preds.csv`` per run, ``out_dir/failed_images.csv`` (unreadable: ``id, reason``) and
    ``out_dir/flagged_images.csv`` (graded but suspect: ``id, status, reason``); both may be empty."""
    out = Path(out_dir)
    paths = {}
    for name, df in results.items():
        views = [c for c in df.columns if c.startswith("pred_fold") and "_view" in c]
        paths[name] = io.write_csv(out / name / PRED_FILE, df.drop(columns=views))
        if views:  # per fold x TTA view, for per-image uncertainty (kaggle_utils.inference.shift.uncertainty)
            io.write_csv(out / name / VIEWS_FILE, df[["id", *views]])
    if results:
        first = next(iter(results.values()))
        io.write_csv(out / FAILED_FILE, first.loc[first["status"] != "ok", ["id", "reason"]])
        flags = (first["flag"] if "flag" in first.columns else pd.Series("", index=first.index)).astype(str)
        keep = (flags != "").to_numpy()
        # built from plain lists: assign() with a Series onto an empty selection adds rows (pandas 3)
        io.write_csv(out / FLAGGED_FILE, pd.DataFrame({"id": first["id"].to_numpy()[keep].tolist(),
                                                       "status": "flagged", "reason": flags[keep].tolist()},
                                                      columns=["id", "status", "reason"]))
    return paths


SETTINGS_FILE = "inference.json"  # how the predictions in a preds folder were made (TTA, adaptation, looks)


def recipe_record(run: Run) -> dict[str, Any]:
    """What a run's test images went through, for the predictions' metadata: its training recipe and, when
    it brings natural-colour photographs to a Ben copy's look, that recipe too (its blur is this version's;
    like every test image, the result is then resized to the run's size: ``load_test_image``)."""
    cfg = run.preprocess
    return {"trained": cfg.to_dict(), "natural_photographs": natural_recipe(cfg).to_dict()
            if cfg.natural == "ben" else None}


def infer(run_dirs: Sequence[str | os.PathLike], table: pd.DataFrame, out_dir: str | os.PathLike,
          tta: str = "none", batch_size: int = 32, workers: int | None = None, device: str = "auto", seed: int = 0,
          progress: bool = True, adapt_bn: float = 0.0) -> dict[str, pd.DataFrame]:
    """Load runs, predict ``table`` and write the prediction files: the infer notebook's one call.
    ``adapt_bn``: the share of BatchNorm statistics taken from ``table``'s images (0 = off)."""
    devices = _devices(device)
    runs = [load_run(d, devices) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InferenceError(f"run folder names must be unique, got {names}")
    results = predict_runs(runs, table, tta, batch_size, workers, seed, progress, adapt_bn)
    write_predictions(results, out_dir)
    io.write_json(Path(out_dir) / SETTINGS_FILE, {"runs": names, "tta": tta, "adapt_bn": float(adapt_bn),
                                                  "seed": seed, "images": len(table),
                                                  "recipes": {r.name: recipe_record(r) for r in runs}})
    first = results[names[0]]
    if len(first) and (first["status"] != "ok").all():  # a submission of fallback grades only is no result
        reasons = "; ".join(f"{r.id}: {r.reason}" for r in first.head(3).itertuples())
        raise InferenceError(f"none of the {len(first)} test images could be read ({reasons}); "
                             f"see {Path(out_dir) / FAILED_FILE}")
    return results


def _relocated(config: dict[str, Any], key: str, fold_dir: Path) -> str:
    """``config[key]``, or where it sits now when the whole workdir was moved or copied (Kaggle users copy
    outputs between kernels): the same path relative to the fold folder as when it was trained."""
    saved = str(config[key])
    if Path(saved).exists() or not config.get("out_dir"):
        return saved
    moved = (fold_dir / os.path.relpath(saved, config["out_dir"])).resolve()
    return str(moved) if moved.exists() else saved


def predict_oof(run_dir: str | os.PathLike, tta: str = "none", batch_size: int = 32, workers: int | None = None,
                device: str = "auto", seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Each fold's model on its own validation images, through the test-time pipeline and TTA.

    Training's ``oof.csv`` comes from the validation pass without TTA; thresholds and blend weights fitted on
    it would then be applied to test predictions made with TTA. Predicting the OOF rows the way the test set
    is predicted keeps the two on the same scale. Returns ``id, grade, pred, fold`` like ``oof.csv``.
    """
    from kaggle_utils.data.cache import load_cache
    from kaggle_utils.training.checkpoint import load_checkpoint

    run = load_run(run_dir, _device(device))
    parts = []
    for path, model, fold in zip(fold_checkpoints(run_dir), run.models, run.folds, strict=True):
        oof = io.read_csv(path.parent / "oof.csv")
        cache_dir = _relocated(load_checkpoint(path)["config"], "cache_dir", path.parent)
        raw = load_cache(cache_dir, check_files=False).set_index("id")["path"]
        one = Run(run.name, run.folder, [model], [fold], run.preprocess, run.size, run.mean, run.std)
        pred = predict_runs([one], pd.DataFrame({"id": oof["id"], "path": oof["id"].map(raw)}), tta,
                            batch_size, workers, seed, progress)[run.name]
        parts.append(oof.assign(pred=pred["pred"].to_numpy()))
    return pd.concat(parts, ignore_index=True)
