"""``python -m kaggle_utils.run CONFIG --plan --measure``: every step's time measured on the device present.

FLOP estimates miss by a factor of two either way (depthwise convolutions, bf16, data loading, per-epoch
checkpoints), and a training kernel must stop before a 9 h run that cannot fit, not after. So this runs the
real thing briefly: for every distinct (model, head, size, batch, precision, loader) of the plan it builds the
Trainer itself (its precision choice from ``training.precision.resolve``, channels_last as the config says,
its DataLoader and augmentation) on a few real images of the config's competition source preprocessed by the
model's recipe and cached as the preprocess step would, and times optimiser steps (loading included), the
validation pass and an epoch end's checkpoints; inference is ``predict_batch`` with the config's TTA views;
the blend runs its own code on stand-in predictions (``fixed_costs``).
Warm-up first (oneDNN/cuDNN choose kernels on the first calls), then the median of a few steps: a shared
machine only ever slows a step down, and the median ignores a bad one. A step's time is these unit costs
times the plan's counts, plus the measured start of a notebook (kernel + imports).

Runs on CUDA when there is one, else the CPU; nothing is written outside a temporary folder.

Size: also holds :func:`ddp_rank_epoch`, the rank function ``bench/gpu_check.py`` spawns for DDP over two GPUs
(spawned processes must import it from the package, and it builds its Trainer the way the measurement does).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_utils.run.fixed_costs import measure_blend, notebook_start_s

WARMUP, STEPS = 2, 3  # optimiser steps: discarded, then timed (median)
MAX_STEPS, ENOUGH_S = 9, 3.0  # cheap steps: up to 9 timed, while they total under 3 s
SLOW_STEP_S = 8.0  # a first step slower than this (a big model on a CPU): one warm-up, two timed
SPEED_FIELDS = ("model", "head", "pool", "size", "batch_size", "val_batch_size", "amp", "amp_dtype",
                "channels_last", "augmentation", "num_workers", "in_memory")
PNG_COMPRESSION = 3  # the cache's (data/cache.py)


@dataclass
class TrainUnit:
    """One distinct training setting, measured."""

    label: str
    step_s: float  # one optimiser step, its batch's loading included
    steps: int  # how many were timed (the median's)
    val_img_s: float  # validation pass per image (loader, forward, loss)
    epoch_end_s: float  # last.pt + epoch tables + best.pt + oof.csv (thresholds: Measurer.thresholds_s)
    setup_s: float  # building the Trainer (model, datasets, loaders, optimiser)
    est_step_s: float  # the FLOP estimate of one step here, for comparison
    thresholds_s: Callable[[int], float]


@dataclass
class InferUnit:
    label: str
    view_s: float  # one image through one TTA view (predict_batch, its precision)
    est_view_s: float


def device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(dev: Any) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"this CPU ({torch.get_num_threads()} threads)"


def median_time(fn: Callable[[], Any], warmup: int = WARMUP, runs: int = STEPS) -> tuple[float, int]:
    """(median seconds, runs timed) of ``fn`` after ``warmup`` calls. Cheap calls get more runs (up to
    ``MAX_STEPS`` while they total under ``ENOUGH_S``) for a steadier median on a shared machine; a first call
    slower than ``SLOW_STEP_S`` (a big model on a CPU) cuts to one warm-up and two runs."""
    times: list[float] = []
    while len(times) < warmup + runs:
        times.append(_timed(fn))
        if len(times) == 1 and times[0] > SLOW_STEP_S:
            warmup, runs = 1, min(runs, 2)
        timed = times[warmup:]
        if len(times) == warmup + runs and sum(timed) < ENOUGH_S and runs < MAX_STEPS:
            runs += 1
    timed = times[warmup:]
    return statistics.median(timed), len(timed)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------------ sample images


def cache_samples(originals: list[str], recipe: Any, out: Path) -> tuple[list[str], float]:
    """The originals preprocessed by ``recipe`` and written as the cache writes them (lossless PNG), and the
    seconds per image the preprocess step spends on one (duplicate hash + recipe + encode), median after a
    warm-up."""
    import cv2

    from kaggle_utils.data.folds import image_hash
    from kaggle_utils.data.preprocess import preprocess_image

    out.mkdir(parents=True, exist_ok=True)
    paths, times = [], []
    for i, src in enumerate(originals):
        t0 = time.perf_counter()
        image_hash(src)
        img = preprocess_image(src, recipe)
        ok, data = cv2.imencode(".png", img[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        times.append(time.perf_counter() - t0)
        dst = out / f"img{i:03d}.png"
        dst.write_bytes(data.tobytes())
        paths.append(str(dst))
    if not paths:
        raise ValueError("no sample image to measure on")
    return paths, statistics.median(times[1:] or times)


def sample_table(paths: list[str], n_train: int, n_val: int) -> Any:
    """``n_train`` training and ``n_val`` validation rows cycling over the sample images, every grade."""
    import pandas as pd

    n = n_train + n_val
    return pd.DataFrame({"id": [f"m{i:04d}" for i in range(n)], "path": [paths[i % len(paths)] for i in range(n)],
                         "grade": [i % 5 for i in range(n)], "fold": [0] * n_val + [1] * n_train})


# ------------------------------------------------------------------------------------------------ training


def speed_key(params: dict[str, Any]) -> tuple:
    """What a step's speed depends on: its TrainConfig speed fields (defaults filled in)."""
    from kaggle_utils.training.config import TrainConfig

    d = TrainConfig()
    return tuple(str(params.get(k, getattr(d, k))) for k in SPEED_FIELDS)


def train_config(params: dict[str, Any], dev: Any, out: Path) -> Any:
    """The step's TrainConfig with its data, weights and run bookkeeping replaced by the measurement's."""
    from kaggle_utils.training.config import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    own = {k: v for k, v in params.items() if k in fields}
    own.update(out_dir=str(out), cache_dir=None, table_csv=None, folds_csv=None, fold=0, n_folds=None,
               pretrained=False, init_from=None, deadline=None, source_weights=None, samples_per_epoch=None,
               max_steps_per_epoch=None, checkpoint_every_steps=None, checkpoint_every_minutes=None,
               progress=False, overwrite=True, device=dev.type, average_last=None, patience=None)
    return TrainConfig.from_dict(own)


def build_trainer(params: dict[str, Any], pngs: list[str], dev: Any, out: Path, dist_info: Any = None) -> Any:
    """The Trainer a step would build (its precision, layout, loader, augmentation) on the sample images."""
    from kaggle_utils.training.loop import Trainer

    cfg = train_config(params, dev, out)
    val_n = cfg.val_batch_size or 2 * cfg.batch_size
    return Trainer(cfg, sample_table(pngs, cfg.batch_size * (WARMUP + STEPS + 1), val_n), dist_info=dist_info)


def measure_train(params: dict[str, Any], pngs: list[str], dev: Any, out: Path) -> TrainUnit:
    """Time the Trainer on the sample: optimiser steps, a validation pass, an epoch end (under train_fold's
    determinism setting: deterministic on the CPU, cudnn.benchmark on CUDA)."""
    from kaggle_utils.training.checkpoint import deterministic, wants_determinism

    cfg = train_config(params, dev, out)
    with deterministic(wants_determinism(cfg)):
        t0 = time.perf_counter()
        trainer = build_trainer(params, pngs, dev, out)
        return time_trainer(trainer, time.perf_counter() - t0)


def time_trainer(trainer: Any, setup_s: float = 0.0) -> TrainUnit:
    """Optimiser steps (each loading its batch), a validation pass and an epoch end's files, timed."""
    import numpy as np

    from kaggle_utils.metrics import optimise_thresholds

    cfg = trainer.cfg
    trainer.model.train()
    batches = iter(trainer.train_loader)

    def step() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:  # more timed steps than the sample's epoch: a new one
            batches = iter(trainer.train_loader)
            x, y = next(batches)
        float(trainer.train_step(x, y))  # waits for the device

    step_s, steps = median_time(step)
    trainer.predict_val()  # warm-up: eval-mode kernels
    t0 = time.perf_counter()
    preds, val_loss = trainer.predict_val()
    val_img_s = (time.perf_counter() - t0) / max(1, len(preds))
    trainer.out.mkdir(parents=True, exist_ok=True)
    row = {"epoch": 1, "train_loss": 1.0, "val_loss": val_loss, "val_qwk": 0.5, "lr": cfg.lr, "time": 1.0}
    trainer.history = [row]
    first = _timed(trainer.save_last)  # matplotlib's import and font cache: once per step in the real run too
    trainer._tables_at = -1  # the epoch tables are rewritten at every epoch end
    last = _timed(trainer.save_last)
    epoch_end_s = last + _timed(lambda: trainer.save_best(row, preds))
    grades = np.rint(trainer.val_ds.grades).astype(int)

    def thresholds_s(n: int) -> float:
        """Fitting thresholds on a validation fold of ``n`` (save_best does, every improving epoch)."""
        return _timed(lambda: optimise_thresholds(np.resize(preds, n), np.resize(grades, n)))

    return TrainUnit(_label(cfg, trainer), step_s, steps, val_img_s, epoch_end_s, setup_s + max(0.0, first - last),
                     _est_step_s(cfg), thresholds_s)


def _label(cfg: Any, trainer: Any) -> str:
    prec = ("bf16" if "bfloat" in str(trainer.amp_dtype) else "fp16") if trainer.amp else "fp32"
    layout = " channels_last" if trainer.channels_last else ""
    return f"{cfg.model} {cfg.head} @{cfg.size} batch {cfg.batch_size} {prec}{layout}"


def _est_step_s(cfg: Any) -> float:
    from kaggle_utils.kernel.plan import model_family
    from kaggle_utils.run.estimate import Cost, forward_gflop

    cost = Cost(forward_gflop(cfg.model, cfg.head, cfg.size))
    return cost.here(model_family(cfg.model), cfg.batch_size, 0, cfg.size)


# ----------------------------------------------------------------------------------------------- inference


def measure_infer(run: dict[str, Any], batch: int, tta: str, pngs: list[str], dev: Any) -> InferUnit:
    """One image-view through ``predict_batch`` (the infer step's path: its precision, channels_last, TTA)."""
    import torch

    from kaggle_utils.inference.predict import predict_batch, tta_views
    from kaggle_utils.kernel.plan import model_family
    from kaggle_utils.models import create_model
    from kaggle_utils.run.estimate import Cost, forward_gflop

    size = int(run["size"])
    net = create_model(run["model"], head=run["head"], pool=run.get("pool", "avg"), pretrained=False)
    net = net.eval().to(dev).to(memory_format=torch.channels_last)
    x = sample_batch(pngs, batch, size)
    views = tta_views(tta)

    def forward() -> None:
        predict_batch([net], x, net.mean, net.std, tta)
        _sync(dev)

    view_s = median_time(forward, 2, 3)[0] / (batch * views)  # the heap settles over the first batches
    est = Cost(forward_gflop(run["model"], run["head"], size)).here(model_family(run["model"]), 0, 1, size)
    label = f"{run['model']} {run['head']} @{size} batch {batch} TTA {tta}"
    return InferUnit(label, view_s, est)


def sample_batch(pngs: list[str], batch: int, size: int) -> Any:
    """A uint8 NCHW batch of the sample images at ``size``, as the infer step's loader hands it over."""
    import cv2
    import numpy as np
    import torch

    from kaggle_utils.data.dataset import read_rgb

    imgs = [cv2.resize(read_rgb(pngs[i % len(pngs)]), (size, size), interpolation=cv2.INTER_AREA)
            for i in range(batch)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)  # NHWC in memory, like iter_batches


def load_s(originals: list[str], recipe: Any, size: int) -> float:
    """Seconds per test image for the infer step's loader (decode + recipe + resize), median after a warm-up."""
    from kaggle_utils.inference.predict import load_test_image

    times = []
    for src in originals:
        t0 = time.perf_counter()
        load_test_image(src, recipe, size)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] or times)


# ----------------------------------------------------------------------------------------------- the plan


class Measurer:
    """Measures each distinct unit once and prices every row of the plan with them."""

    def __init__(self, cfg: dict[str, Any], facts: dict[str, Any], tmp: Path, say: Callable[[str], None]):
        from kaggle_utils.data.assemble import parse_sources

        self.cfg, self.facts, self.tmp, self.say = cfg, facts, tmp, say
        self.dev = device()
        self.specs = parse_sources(cfg["data"])
        self.comp = next(s for s in self.specs if s.role == "competition")
        self.train: dict[tuple, TrainUnit] = {}
        self.infer: dict[tuple, InferUnit] = {}
        self.samples: dict[str, tuple[list[str], float]] = {}
        self.thresholds: dict[int, float] = {}
        self.loads: dict[tuple, float] = {}
        self.blends: dict[str, dict[str, float]] = {}
        self.recipes: dict[str, str] = {}  # sample key -> a short description of its recipe
        self.start_s = notebook_start_s(tmp)

    def originals(self, spec: Any) -> list[str]:
        return list(self.facts["samples"].get(spec.name) or [])

    def cached(self, base: dict[str, Any], spec: Any | None = None) -> tuple[list[str], float]:
        """Sample images of ``spec`` (default: the competition source) cached with its recipe for ``base``."""
        spec = spec or self.comp
        recipe = spec.recipe(base)
        key = f"{spec.name}:{sorted(recipe.to_dict().items())}"
        if key not in self.samples:
            out = self.tmp / f"cache{len(self.samples)}"
            self.samples[key] = cache_samples(self.originals(spec), recipe, out)
            flags = [k for k in ("crop", "circle", "clahe", "ben_graham") if getattr(recipe, k)]
            self.recipes[key] = f"{spec.name} @{recipe.size} {'+'.join(flags) or 'resize only'}"
        return self.samples[key]

    def train_unit(self, params: dict[str, Any], recipe: dict[str, Any]) -> TrainUnit:
        key = (*speed_key(params), str(recipe.get("size")))
        if key not in self.train:
            pngs, _ = self.cached(recipe)
            out = self.tmp / f"train{len(self.train)}"
            self.train[key] = measure_train(params, pngs, self.dev, out)
            u = self.train[key]
            self.say(f"[measure] {u.label}: {u.step_s:.3f} s/step, validation {1e3 * u.val_img_s:.1f} ms/img")
        return self.train[key]

    def infer_unit(self, run: dict[str, Any], batch: int, tta: str) -> InferUnit:
        key = (run["model"], run["head"], run.get("pool", "avg"), int(run["size"]), batch, tta)
        if key not in self.infer:
            pngs, _ = self.cached(run.get("preprocess") or {})
            self.infer[key] = measure_infer(run, batch, tta, pngs, self.dev)
            u = self.infer[key]
            self.say(f"[measure] {u.label}: {1e3 * u.view_s:.2f} ms per image and view")
        return self.infer[key]

    def blend_parts(self, work: dict[str, Any]) -> dict[str, float]:
        key = str([work["runs"], work["n_oof"], work["n_test"]])  # a pseudo round's blend prices like the first
        if key not in self.blends:
            self.blends[key] = measure_blend(work, self.cached(work["runs"][0].get("preprocess") or {})[0],
                                             self.tmp / f"blend{len(self.blends)}")
        return self.blends[key]

    # ---- rows
    def row_s(self, row: dict[str, Any]) -> float:
        work = row.get("work") or {}
        kind = work.get("kind")
        if kind == "preprocess":
            return self.start_s + sum(self.cached(work["base"], s)[1] * self.facts["counts"].get(s.name, 0)
                                      for s in self.specs) / work["workers"]
        if kind == "train":
            return self.train_s(work)
        if kind == "infer":
            return self.infer_s(work)
        if kind == "blend":
            return sum(self.blend_parts(work).values())
        return row["here_s"]  # pseudo-labelling: the estimate's constant

    def train_s(self, work: dict[str, Any]) -> float:
        p = work["params"]
        u = self.train_unit(p, work.get("preprocess") or {})
        bs = int(p.get("batch_size", 16))
        steps = work["per_epoch"] // bs if work["per_epoch"] >= bs else 1
        val = int(work["val"])
        epoch = steps * u.step_s + val * u.val_img_s + u.epoch_end_s + self.thresholds_s(u, val)
        work["epoch_s"] = epoch  # beside metrics.csv's epoch times, once the step has run
        from kaggle_utils.run.estimate import epoch_sizes

        size = int(p.get("size", 224))  # smaller epochs of a size schedule: step time x pixel ratio
        smaller = sum(1 - (s / size) ** 2 for s in epoch_sizes(p, size, work["epochs"]))
        return self.start_s + u.setup_s + work["epochs"] * epoch - smaller * steps * u.step_s

    def thresholds_s(self, unit: TrainUnit, n: int) -> float:
        """Fitting QWK thresholds on a validation fold of ``n`` (model-independent, so measured once per n)."""
        if n and n not in self.thresholds:
            self.thresholds[n] = unit.thresholds_s(n)
        return self.thresholds.get(n, 0.0)

    def load_s(self, images: list[str], recipe: Any, size: int) -> float:
        key = (tuple(images), str(sorted(recipe.to_dict().items())), size)
        if key not in self.loads:
            self.loads[key] = load_s(images, recipe, size)
        return self.loads[key]

    def infer_s(self, work: dict[str, Any]) -> float:
        from kaggle_utils.inference.predict import default_workers

        fwd = load = 0.0
        recipes = set()
        for run in work["runs"]:
            u = self.infer_unit(run, work["batch_size"], work["tta"])
            fwd += u.view_s * work["views"] * (work["n_test"] * run["folds"] + work["n_oof"])
            recipe = self.comp.recipe(run["preprocess"])
            key = (str(sorted(recipe.to_dict().items())), run["size"])
            if key not in recipes:  # runs sharing a recipe and size read each test image once
                recipes.add(key)
                load += work["n_test"] * self.load_s(self.originals(self.comp), recipe, run["size"])
            if work["n_oof"]:  # the OOF pass reads the cache per run
                load += work["n_oof"] * self.load_s(self.cached(run["preprocess"])[0], recipe, run["size"])
        if self.dev.type == "cuda":  # loader threads overlap the GPU
            return self.start_s + max(fwd, load / default_workers())
        return self.start_s + fwd + load  # on the CPU they share the cores


def measure(cfg: dict[str, Any], rows: list[dict[str, Any]], facts: dict[str, Any],
            say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Adds ``measured_s`` to every row and ``facts["measured"]`` (device, total, lines for the table)."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    busy = _load()  # before this process adds its own
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kaggle_utils_measure_") as tmp:
        m = Measurer(cfg, facts, Path(tmp), say)
        say(f"[measure] on {device_name(m.dev)}: notebook start {m.start_s:.1f} s")
        for row in rows:
            row["measured_s"] = m.row_s(row)
    total = sum(r["measured_s"] for r in rows)
    lines = _unit_lines(m, time.perf_counter() - t0)
    cores = os.cpu_count() or 1
    if m.dev.type == "cpu" and busy > 0.5 * cores:
        lines.append(f"WARNING: the machine was busy when measuring began (load average {busy:.1f} on {cores} "
                     "cores): other processes slow every step, several-fold on a CPU; measure again when it is "
                     "idle, or read the times as what this load would give")
    facts["measured"] = {"device": device_name(m.dev), "total_s": total, "seconds": time.perf_counter() - t0,
                         "load_before": busy, "lines": lines}
    return facts["measured"]


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _unit_lines(m: Measurer, took: float) -> list[str]:
    """What was measured, each beside the FLOP estimate of the same unit here."""
    lines = [f"measured in {took:.0f} s on {device_name(m.dev)} (load average {_load():.1f}); notebook start "
             f"{m.start_s:.1f} s"]
    for u in m.train.values():
        lines.append(f"  train  {u.label}: {u.step_s:.3f} s/step, median of {u.steps} after warm-up "
                     f"(estimate {u.est_step_s:.3f}, x"
                     f"{u.step_s / u.est_step_s:.2f}); validation {1e3 * u.val_img_s:.1f} ms/img; epoch end "
                     f"{u.epoch_end_s:.1f} s; setup {u.setup_s:.1f} s")
    for v in m.infer.values():
        lines.append(f"  infer  {v.label}: {1e3 * v.view_s:.2f} ms per image and view (estimate "
                     f"{1e3 * v.est_view_s:.2f}, x{v.view_s / v.est_view_s:.2f})")
    for parts in m.blends.values():
        lines.append("  blend  " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    for key, (_, per) in m.samples.items():
        lines.append(f"  preprocess {m.recipes[key]}: {1e3 * per:.1f} ms/img (hash + recipe + PNG, 1 process)")
    return lines


def verdict(facts: dict[str, Any]) -> tuple[str, bool]:
    """The line the training kernel shows before it starts: does the measured total fit the budget?"""
    from kaggle_utils.run.estimate import hm

    m, budget = facts["measured"], facts["budget_s"]
    total = m["total_s"]
    if total <= budget:
        return (f"[measure] fits: {hm(total)} measured on {m['device']} of a {hm(budget)} budget "
                f"({100 * total / budget:.0f} %)", True)
    return (f"[measure] OVER BUDGET: {hm(total)} measured on {m['device']} exceeds the {hm(budget)} budget by "
            f"{hm(total - budget)}; use fewer models, folds, epochs or TTA views, or a smaller size", False)


def ddp_rank_epoch(rank: int, params: dict[str, Any], pngs: list[str], backend: str, port: int, out: str,
                   steps: int = 12) -> None:
    """One rank of a DDP world of two training one short epoch (``bench/gpu_check.py``: one process per GPU
    with nccl, or two CPU processes with gloo); writes ``out/rank<k>.txt``: status and median s/step."""
    import torch
    import torch.distributed as dist

    from kaggle_utils.training.distributed import DistInfo
    from kaggle_utils.training.loop import Trainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=2)
    try:
        cfg = train_config(params, dev, Path(out) / f"rank{rank}").replace(epochs=1,
                                                                                   max_steps_per_epoch=steps)
        table = sample_table(pngs, cfg.batch_size * 2 * (steps + 1), 2 * cfg.batch_size)
        stamps: list[float] = []
        trainer = Trainer(cfg, table, on_step=lambda _: stamps.append(time.perf_counter()),
                          dist_info=DistInfo(rank, 2, rank))
        result = trainer.fit()
        gaps = sorted(b - a for a, b in zip(stamps[2:], stamps[3:], strict=False))
        step = gaps[len(gaps) // 2] if gaps else float("nan")
        from kaggle_utils import io

        io.write_text(Path(out, f"rank{rank}.txt"), f"{result['status']} {step}")
    finally:
        dist.destroy_process_group()
