"""What the training kernel needs besides the chain: the config read as a bundle sees it (models, weights,
``/kaggle/input`` mounts), the smoke override, the measured epoch times and the output pruning.

The smoke override is one pure function over the config dict (:func:`smoke_config`): the chain runs the
rewritten config as it runs any other, so a smoke run exercises exactly the code a full run does, only
less of it. The notebook (``notebooks/train_kernel.py``) and ``build_kernel.py --train --verify`` use it.
Light on purpose: the kernel notebook imports it before torch.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kaggle_utils import io

KAGGLE_INPUT = PurePosixPath("/kaggle/input")
KAGGLE_WORKING = PurePosixPath("/kaggle/working")
DEFAULT_MODEL = "efficientnet-lite0"  # TrainConfig's default (tests/test_defaults.py keeps them equal)
# 96 px: the smallest size every zoo architecture accepts (Inception's stem needs more than 64)
SMOKE = {"rows": 40, "external_rows": 20, "size": 96, "n_folds": 2, "steps": 2, "batch_size": 8,
         "holdout": 8, "pseudo_rounds": 1, "val_fraction": 0.25}


# ------------------------------------------------------------------------------------------ reading
def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The chain config as YAML (the chain itself checks it; the bundle only reads what it packs)."""
    import yaml

    cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(cfg, dict) or not cfg.get("models") or "data" not in cfg:
        raise ValueError(f"{path}: not a chain config (needs 'data' and 'models'; see configs/)")
    return cfg


def source_dicts(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """``data:`` as a list of source dicts: the single-source form becomes the one competition source it
    stands for (as :func:`kaggle_utils.data.assemble.parse_sources` reads it)."""
    data = cfg["data"]
    if "sources" in data:
        return [dict(s) for s in data["sources"]]
    kind = data.get("source", "aptos")
    one = {"name": kind, "reader": kind, "csv": data.get("csv"), "images": data.get("images"),
           "role": "competition"}
    one.update({k: data[k] for k in ("holdout", "ext", "rows") if k in data})
    return [one]


@dataclass(frozen=True)
class ModelNeed:
    """One config model as the bundle sees it: the architecture and whether it starts from ImageNet."""

    name: str
    model: str
    pretrained: bool | str


def model_needs(cfg: dict[str, Any]) -> list[ModelNeed]:
    """Each model's architecture and ``pretrained`` (model > ``train:`` > TrainConfig's default, True); a
    model pre-trained in stage 1 starts that stage from ImageNet too."""
    train, pre = cfg.get("train") or {}, cfg.get("pretrain") or {}
    out = []
    for m in cfg["models"]:
        arch = m.get("model", train.get("model", DEFAULT_MODEL))
        flags = [m.get("pretrained", train.get("pretrained", True))]
        if m.get("pretrain"):
            own = m["pretrain"] if isinstance(m["pretrain"], dict) else {}
            flags.append(own.get("pretrained", pre.get("pretrained", flags[0])))
        path = next((f for f in flags if isinstance(f, str)), None)
        out.append(ModelNeed(m["name"], arch, path if path is not None else any(flags)))
    return out


def input_paths(cfg: dict[str, Any]) -> list[str]:
    """Every data path the config reads: each source's csv and images, the test csv and images."""
    paths = [p for s in source_dicts(cfg) for p in (s.get("csv"), s.get("images"))]
    test = cfg.get("test") or {}
    return [str(p) for p in [*paths, test.get("csv"), test.get("images")] if p]


def mount(path: str) -> str | None:
    """The dataset a ``/kaggle/input/<mount>/...`` path lies in, else None."""
    parts = PurePosixPath(path).parts
    return parts[3] if len(parts) > 3 and PurePosixPath(*parts[:3]) == KAGGLE_INPUT else None


def competition_mount(cfg: dict[str, Any]) -> str | None:
    comp = next((s for s in source_dicts(cfg) if s.get("role", "competition") == "competition"), {})
    return mount(str(comp.get("csv", "")))


def not_on_kaggle(cfg: dict[str, Any]) -> list[str]:
    """Why the config cannot run in a Kaggle kernel as it is: inputs outside ``/kaggle/input``, outputs
    outside ``/kaggle/working`` (the only folder Kaggle keeps as the kernel's output)."""
    problems = [f"{p} is not under {KAGGLE_INPUT}/ (a kernel sees only attached data there)"
                for p in input_paths(cfg) if mount(p) is None]
    work = PurePosixPath(str(cfg.get("workdir", "")))
    if KAGGLE_WORKING not in work.parents:
        problems.append(f"workdir {cfg.get('workdir')!r} is not under {KAGGLE_WORKING}/ (Kaggle keeps only "
                        "that folder as the kernel's output, which the submission bundle reads)")
    return problems


def external_mounts(cfg: dict[str, Any]) -> list[str]:
    """The ``/kaggle/input`` datasets the config reads besides the competition's: they must be attached."""
    comp = competition_mount(cfg)
    return sorted({m for p in input_paths(cfg) if (m := mount(p)) and m != comp})


# ------------------------------------------------------------------------------------------ smoke
def smoke_config(cfg: dict[str, Any], rows: int = SMOKE["rows"], external_rows: int = SMOKE["external_rows"],
                 size: int = SMOKE["size"], n_folds: int = SMOKE["n_folds"], steps: int = SMOKE["steps"],
                 batch_size: int = SMOKE["batch_size"]) -> dict[str, Any]:
    """The config shrunk to a check that every step runs: 1 epoch of ``steps`` optimiser steps at ``size``
    px (no size schedule), ``rows`` competition and ``external_rows`` rows per external source (stratified), ``n_folds`` folds,
    stage 1 validating on a quarter of its few rows (at least), the first seed and size of each model, at most
    one pseudo-label round. Every test image is still graded, so the submission it writes covers the test set.
    Returns a new dict; ``cfg`` is not changed."""
    out = copy.deepcopy(cfg)
    sources = source_dicts(out)
    for s in sources:
        competition = s.get("role", "competition") == "competition"
        limit = rows if competition else external_rows
        s["max_rows"] = min(int(s["max_rows"]), limit) if s.get("max_rows") else limit
        if s.get("holdout"):
            s["holdout"] = min(int(s["holdout"]), SMOKE["holdout"])
        _set_size(s.get("preprocess"), size)
    out["data"] = {"sources": sources}
    out["preprocess"] = {**(out.get("preprocess") or {}), "size": size}
    out["folds"] = {**(out.get("folds") or {}), "n_folds": n_folds}
    short = {"epochs": 1, "max_steps_per_epoch": steps, "size_schedule": None}
    out["train"] = {**(out.get("train") or {}), **short, "size": size,
                    "batch_size": min(int((out.get("train") or {}).get("batch_size", batch_size)), batch_size)}
    if out.get("pretrain"):
        out["pretrain"] = {**out["pretrain"], **short}
        if out["pretrain"].get("val_fraction"):  # one validation share of 1/fraction needs that many groups
            out["pretrain"]["val_fraction"] = max(float(out["pretrain"]["val_fraction"]), SMOKE["val_fraction"])
    out["models"] = [_smoke_model(m, size, n_folds, batch_size, short) for m in out["models"]]
    if (out.get("pseudo") or {}).get("rounds"):
        out["pseudo"] = {**out["pseudo"], "rounds": min(int(out["pseudo"]["rounds"]), SMOKE["pseudo_rounds"])}
    if out.get("infer"):
        out["infer"] = {**out["infer"], "batch_size": min(int(out["infer"].get("batch_size", 8)), batch_size)}
    return out


def _set_size(pre: dict[str, Any] | None, size: int) -> None:
    if pre and "size" in pre:
        pre["size"] = size


def _smoke_model(m: dict[str, Any], size: int, n_folds: int, batch_size: int, short: dict[str, int]
                 ) -> dict[str, Any]:
    m = {**m, **short, "size": size}
    m.pop("sizes", None)
    if m.get("seeds"):
        m["seeds"] = m["seeds"][:1]
    if "folds" in m:
        m["folds"] = [f for f in m["folds"] if int(f) < n_folds] or [0]
    if "batch_size" in m:
        m["batch_size"] = min(int(m["batch_size"]), batch_size)
    _set_size(m.get("preprocess"), size)
    if isinstance(m.get("pretrain"), dict):
        m["pretrain"] = {**m["pretrain"], **short}
    return m


# ------------------------------------------------------------------------------------------ after the chain
def epoch_times(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Measured epoch times of every training run under ``workdir`` (from each run's ``metrics.csv``):
    what the plan estimated, now measured on the device that ran it."""
    work = Path(workdir)
    rows = []
    for metrics in sorted(work.glob("runs*/*/fold*/metrics.csv")) + sorted(work.glob("pretrain/*/metrics.csv")):
        df = io.read_csv(metrics)
        if df.empty or "time" not in df.columns:
            continue
        rows.append({"run": metrics.parent.relative_to(work).as_posix(), "epochs": len(df),
                     "mean_s": float(df["time"].mean()), "max_s": float(df["time"].max()),
                     "total_s": float(df["time"].sum())})
    return rows


def format_epoch_times(rows: list[dict[str, Any]], device: str) -> str:
    if not rows:
        return "no training run wrote metrics.csv: nothing trained (all steps done earlier?)"
    lines = [f"measured epoch times on {device}:", f"  {'run':40s} {'epochs':>6s} {'s/epoch':>9s} {'max s':>8s} "
             f"{'total min':>9s}"]
    lines += [f"  {r['run']:40s} {r['epochs']:6d} {r['mean_s']:9.1f} {r['max_s']:8.1f} {r['total_s'] / 60:9.1f}"
              for r in rows]
    total = sum(r["total_s"] for r in rows)
    lines.append(f"  {'all training':40s} {sum(r['epochs'] for r in rows):6d} {'':9s} {'':8s} {total / 60:9.1f}")
    return "\n".join(lines)


def prune_outputs(workdir: str | os.PathLike) -> dict[str, int]:
    """Remove what the submission bundle never reads from the kernel's output: the preprocessed image
    caches (tens of thousands of files) and ``last.pt`` resume states (optimiser state, a Kaggle run does
    not resume). Checkpoints (``best.pt``), OOF, configs, metrics, predictions and the blend stay."""
    work = Path(workdir)
    removed = {"files": 0, "bytes": 0}
    for cache in sorted(p for p in work.glob("cache*") if p.is_dir()):
        for f in cache.rglob("*"):
            if f.is_file():
                removed["files"] += 1
                removed["bytes"] += f.stat().st_size
        shutil.rmtree(cache)
    for last in sorted(work.rglob("last.pt")):
        removed["files"] += 1
        removed["bytes"] += last.stat().st_size
        last.unlink()
    return removed
