"""The GPU code paths, run where a GPU is, with measured vs planned step times.

The project is built for Kaggle GPU kernels, but its GPU paths (AMP fp16 with a GradScaler, channels_last,
cudnn.benchmark, nccl DDP) cannot run on the 2-core machines it is developed on. On CUDA this script, for
every architecture of a config (default ``configs/kaggle_gpu.yaml``) at its size and batch (no weights
needed: ``pretrained=False``):

- trains a few steps through the Trainer (``training.precision.resolve``'s choice: autocast, fp16 with a
  GradScaler on a T4, bf16 without one where the GPU has it; channels_last, cudnn.benchmark) and checks each
  of those and the loss;
- predicts a batch through ``inference.predict.predict_batch`` with the config's TTA views;
- with two or more GPUs (Kaggle's T4 x2), does the same on every GPU: each is a slot of the chain
  (``devices: auto``);
- runs one short epoch under DDP, world size 1 on nccl (a process group from env vars on a free port; the
  Trainer's DDP branch: wrapping, the all-reduced deadline vote, gathered validation, buffer broadcast), and
  with two GPUs world size 2 (one process per GPU);
- prints measured step times beside the plan's: the FLOP estimate for one T4 (the plan's Kaggle column),
  the P100 reference, and what ``--plan --measure`` measures here.

Then (unless ``--no-plan``) the whole config's ``--plan --measure`` on this GPU, with its budget verdict.
Exit status 1 when a check fails. Without CUDA it says so and exits 0.

    python bench/gpu_check.py [--config configs/kaggle_gpu.yaml] [--no-plan]
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
# Dense fp32 peaks (TFLOP/s) by device-name fragment, most specific first: scales the P100 plan to this GPU.
FP32_PEAKS = [("H100 PCIe", 51.2), ("H100", 66.9), ("H200", 66.9), ("A100", 19.5), ("L40S", 91.6), ("L4", 30.3),
              ("A10G", 31.2), ("A10", 31.2), ("V100", 15.7), ("T4", 8.1), ("P100", 9.3)]
DDP_STEPS = 12  # past the Trainer's vote interval (10), so the all-reduced deadline vote runs


def fp32_peak(name: str) -> float | None:
    return next((peak for frag, peak in FP32_PEAKS if frag.lower() in name.lower()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def architectures(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One training setting per distinct (model, head, size, batch) of the config, train defaults filled in."""
    from kaggle_utils.run.config import expand_models

    seen, out = set(), []
    for m in expand_models(cfg):
        params = {**(cfg.get("train") or {}), **{k: v for k, v in m.items() if not k.startswith("_")}}
        key = (params["model"], params.get("head", "regression"), params.get("size", 224),
               params.get("batch_size", 16))
        if key not in seen:
            seen.add(key)
            out.append(params)
    return out


@dataclass
class Result:
    label: str
    checks: dict[str, bool]
    step_s: float
    infer_view_s: float
    planned_t4_s: float
    planned_p100_s: float
    ddp_step_s: float = math.nan


def check_model(params: dict[str, Any], pngs: list[str], tta: str, dev: Any, tmp: Path) -> Result:
    """AMP training through the Trainer (precision as it resolves it), then TTA inference; timed and checked."""
    import numpy as np
    import torch

    from kaggle_utils.inference.predict import predict_batch
    from kaggle_utils.kernel.plan import model_family
    from kaggle_utils.run import measure
    from kaggle_utils.run.estimate import Cost, forward_gflop
    from kaggle_utils.training.checkpoint import deterministic, wants_determinism

    cfg = measure.train_config(params, dev, tmp / "amp")
    with deterministic(wants_determinism(cfg)):
        t0 = time.perf_counter()
        trainer = measure.build_trainer(params, pngs, dev, tmp / "amp")
        unit = measure.time_trainer(trainer, time.perf_counter() - t0)
        x, y = next(iter(trainer.train_loader))
        loss = float(trainer.train_step(x, y))
        conv = next(p for p in trainer.net.parameters() if p.dim() == 4)
        fp16 = trainer.amp_dtype == torch.float16
        checks = {"amp on": bool(trainer.amp),
                  "GradScaler iff fp16": trainer.scaler.is_enabled() == (trainer.amp and fp16),
                  "channels_last": trainer.channels_last and conv.is_contiguous(memory_format=torch.channels_last),
                  "cudnn.benchmark": torch.backends.cudnn.benchmark, "loss finite": math.isfinite(loss)}
        trainer.net.eval()
        preds = predict_batch([trainer.net], measure.sample_batch(pngs, 4, cfg.size), trainer.net.mean,
                              trainer.net.std, tta)
        checks["TTA predict finite"] = preds.shape == (1, 4) and bool(np.isfinite(preds).all())
    del trainer
    infer = measure.measure_infer({"model": cfg.model, "head": cfg.head, "pool": cfg.pool, "size": cfg.size},
                                  32, tta, pngs, dev)
    cost, family = Cost(forward_gflop(cfg.model, cfg.head, cfg.size)), model_family(cfg.model)
    t4 = cost.gpu("t4", family, cfg.batch_size, 0, cfg.size, sharing=2)
    p100 = cost.p100(family, cfg.batch_size, 0, cfg.size)
    _free(dev)
    label = unit.label + (f" [{dev}]" if dev.type == "cuda" else "")
    return Result(label, checks, unit.step_s, infer.view_s, t4, p100)


def ddp_check(params: dict[str, Any], pngs: list[str], dev: Any, tmp: Path) -> tuple[bool, float]:
    """One short epoch through the Trainer's DDP branch in a world of one; (completed, median s/step)."""
    import statistics

    import torch.distributed as dist

    from kaggle_utils.run import measure
    from kaggle_utils.training.checkpoint import deterministic, wants_determinism
    from kaggle_utils.training.distributed import DistInfo
    from kaggle_utils.training.loop import Trainer

    class WorldOfOne(DistInfo):
        @property
        def enabled(self) -> bool:  # world size 1, yet the DDP code path: wrap, all-reduce, gather, broadcast
            return True

    cfg = measure.train_config(params, dev, tmp / "ddp").replace(epochs=1, max_steps_per_epoch=DDP_STEPS)
    table = measure.sample_table(pngs, cfg.batch_size * (DDP_STEPS + 1), 2 * cfg.batch_size)
    stamps: list[float] = []
    with deterministic(wants_determinism(cfg)):
        trainer = Trainer(cfg, table, on_step=lambda _: stamps.append(time.perf_counter()),
                          dist_info=WorldOfOne(dist.get_rank(), dist.get_world_size(), 0))
        result = trainer.fit()
    gaps = [b - a for a, b in zip(stamps[2:], stamps[3:], strict=False)]  # after two warm-up steps
    del trainer
    _free(dev)
    return result["status"] == "completed", statistics.median(gaps) if gaps else math.nan


def ddp_world_of_two(params: dict[str, Any], pngs: list[str], backend: str, tmp: Path) -> tuple[bool, float]:
    """One short epoch under DDP with two ranks (nccl: one per GPU); (both completed, rank 0's s/step)."""
    import torch.multiprocessing as mp

    from kaggle_utils.run.measure import ddp_rank_epoch

    tmp.mkdir(parents=True, exist_ok=True)
    mp.spawn(ddp_rank_epoch, args=(params, pngs, backend, free_port(), str(tmp), DDP_STEPS), nprocs=2, join=True)
    ranks = [(tmp / f"rank{r}.txt").read_text().split() for r in range(2)]
    return all(status == "completed" for status, _ in ranks), float(ranks[0][1])


def init_world_of_one(backend: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1")
    if backend == "nccl":  # as training/distributed.py does: collectives run on the rank's device
        import torch

        torch.cuda.set_device(0)
    dist.init_process_group(backend, rank=0, world_size=1)


def _free(dev: Any) -> None:
    import gc

    import torch

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def report(results: list[Result], gpu: str) -> list[str]:
    peak = fp32_peak(gpu)
    scale = 9.3 / peak if peak else None
    head = (f"{'architecture':<66} {'T4 plan':>8} {'P100 ref':>9} {'scaled':>8} {'measured':>9} {'DDP':>8} "
            f"{'infer ms/img-view':>18}")
    lines = [f"step times in s on {gpu}" + (f" (fp32 peak {peak} TFLOP/s; 'scaled' = P100 plan x 9.3/{peak})"
                                           if peak else " (peak unknown: no scaled column)")
             + "; T4 plan: one T4 of a T4 x2 kernel (the plan's Kaggle column); DDP: world size 1, or 2 "
               "where two GPUs are here", head]
    for r in results:
        scaled = f"{r.planned_p100_s * scale:8.3f}" if scale else f"{'-':>8}"
        lines.append(f"{r.label:<66} {r.planned_t4_s:8.3f} {r.planned_p100_s:9.3f} {scaled} {r.step_s:9.3f} "
                     f"{r.ddp_step_s:8.3f} {1e3 * r.infer_view_s:18.2f}")
    for r in results:
        bad = [k for k, ok in r.checks.items() if not ok]
        lines.append(f"{r.label}: " + ("all checks ok (" + ", ".join(r.checks) + ")" if not bad
                                       else "FAILED: " + ", ".join(bad)))
    return lines


def whole_plan(cfg: dict[str, Any], tmp: Path) -> list[str]:
    """The config's ``--plan --measure`` on this device, budget verdict included."""
    from kaggle_utils.run.estimate import describe, format_plan
    from kaggle_utils.run.measure import measure, verdict

    rows, facts = describe(cfg, tmp / "work")
    measure(cfg, rows, facts)
    return [format_plan(rows, facts), verdict(facts)[0]]


def run(cfg: dict[str, Any], dev: Any, backend: str, plan: bool = True, slots: list[Any] | None = None,
        world_of_two: bool = False) -> tuple[int, list[Result]]:
    """Every check and timing on ``dev`` and on each further device of ``slots``, DDP of one and (with
    ``world_of_two``) of two (tests drive it on the CPU with gloo); (exit status, results)."""
    from kaggle_utils.data.assemble import parse_sources
    from kaggle_utils.run.estimate import describe
    from kaggle_utils.run.measure import cache_samples, device_name

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as name:
        tmp = Path(name)
        _, facts = describe(cfg, tmp / "work")
        comp = next(s for s in parse_sources(cfg["data"]) if s.role == "competition")
        pngs, _ = cache_samples(facts["samples"][comp.name], comp.recipe(cfg.get("preprocess") or {}), tmp / "cache")
        tta = str((cfg.get("infer") or {}).get("tta", "none"))
        results = []
        for i, params in enumerate(architectures(cfg)):
            print(f"[gpu_check] {params['model']} @{params.get('size')}: AMP training + TTA inference", flush=True)
            results.append(check_model(params, pngs, tta, dev, tmp / f"m{i}"))
        for k, other in enumerate(slots or [], start=1):  # every further GPU is a chain slot
            for i, params in enumerate(architectures(cfg)):
                print(f"[gpu_check] slot {k} ({other}): {params['model']}", flush=True)
                results.append(check_model(params, pngs, tta, other, tmp / f"s{k}m{i}"))
        if world_of_two:
            for i, params in enumerate(architectures(cfg)):
                print(f"[gpu_check] {params['model']}: DDP world size 2 ({backend})", flush=True)
                ok, step = ddp_world_of_two(params, pngs, backend, tmp / f"w{i}")
                results[i].checks[f"DDP {backend} world size 2 completed"] = ok
                results[i].ddp_step_s = step
        init_world_of_one(backend)
        try:
            for i, params in enumerate(architectures(cfg)):
                print(f"[gpu_check] {params['model']}: DDP world size 1 ({backend})", flush=True)
                ok, step = ddp_check(params, pngs, dev, tmp / f"d{i}")
                results[i].checks[f"DDP {backend} epoch completed"] = ok
                if not world_of_two:
                    results[i].ddp_step_s = step
        finally:
            import torch.distributed as dist

            dist.destroy_process_group()
        lines = report(results, device_name(dev))
        if plan:
            lines += ["", *whole_plan(cfg, tmp)]
    print("\n".join(lines))
    return (1 if any(not ok for r in results for ok in r.checks.values()) else 0), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "kaggle_gpu.yaml"))
    parser.add_argument("--no-plan", action="store_true", help="skip the whole config's --plan --measure")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}): the GPU paths "
              "are not checked; run this on a machine with a GPU")
        return 0
    from kaggle_utils.run.config import load_config

    cfg = load_config(args.config, plan_only=True)
    n = torch.cuda.device_count()
    for k in range(n):
        props = torch.cuda.get_device_properties(k)
        print(f"[gpu_check] cuda:{k} {props.name}, {props.total_memory / 2**30:.1f} GiB, capability "
              f"{props.major}.{props.minor}", flush=True)
    print(f"[gpu_check] torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s)", flush=True)
    slots = [torch.device("cuda", k) for k in range(1, n)]
    return run(cfg, torch.device("cuda", 0), "nccl", plan=not args.no_plan, slots=slots, world_of_two=n >= 2)[0]


if __name__ == "__main__":
    sys.exit(main())
