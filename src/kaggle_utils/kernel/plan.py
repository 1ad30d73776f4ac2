"""``build_kernel.py --plan``: the kernel's run time on Kaggle, from measurements here and a GPU profile."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_utils.kernel.image import image_distributions, read_image_list
from kaggle_utils.kernel.layout import IMAGE_LIST, REPO_ROOT, BundleError


@dataclass(frozen=True)
class GpuProfile:
    name: str
    peak_tflops: float
    precision: str
    note: str


GPU_PROFILES = {
    "p100": GpuProfile("P100 16 GB", 9.3, "fp32", "no tensor cores; autocast fp16 is assumed to gain nothing"),
    "t4": GpuProfile("T4 16 GB", 65.0, "fp16 tensor cores", "infer.py autocasts to fp16 on CUDA; fp32 peak 8.1"),
}
# Achieved fraction of peak, by architecture family: depthwise-separable convolutions (EfficientNets) are
# memory-bound and reach a small share of peak; dense convolutions (SE-ResNeXt, Inception) much more.
ACHIEVED = {"p100": {"depthwise": 0.10, "dense": 0.40}, "t4": {"depthwise": 0.03, "dense": 0.15}}
KAGGLE_VCPUS = 4
CPU_SCALING = 0.75  # 4 vCPUs are 2 cores x 2 hyper-threads: assume 3x one thread for decoding
OVERHEADS = {"kernel start + CUDA init": 60.0, "pip install from the dataset": 30.0, "blend + write": 10.0}


@dataclass
class RunMeasure:
    """What was measured here for one run (per image)."""

    name: str
    model: str
    size: int
    folds: int
    gflop: float  # forward GFLOP per image (FlopCounterMode: 2 x multiply-adds)
    cpu_img_s: float  # forward images/s on this machine's CPU
    load_s: float  # loading one fold checkpoint
    recipe: str  # preprocessing recipe key (images are decoded once per recipe)


def model_family(model: str) -> str:
    return "depthwise" if model.startswith("efficientnet") else "dense"


def measure_run(run_dir: str | os.PathLike, batch: int = 8, repeats: int = 3) -> RunMeasure:
    """FLOPs per image and CPU forward speed of a run's model at its trained size, and checkpoint load time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kaggle_utils.inference.predict import checkpoint_preprocess, fold_checkpoints
    from kaggle_utils.training.checkpoint import load_checkpoint, load_model

    paths = fold_checkpoints(run_dir)
    t = time.perf_counter()
    ck = load_checkpoint(paths[0])
    model = load_model(ck)
    load_s = time.perf_counter() - t
    cfg = ck.get("config") or {}
    recipe = checkpoint_preprocess(ck, paths[0])
    size = int(cfg.get("size") or recipe.size)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(x)
        gflop = counter.get_total_flops() / 1e9
        xb = torch.rand(batch, 3, size, size)
        times: list[float] = []
        # Warm up until it stops getting faster (first calls pick and cache kernels), then the best of
        # ``repeats`` more counts: other processes on a shared machine only ever slow a batch down.
        for _ in range(6):
            t = time.perf_counter()
            model(xb)
            times.append(time.perf_counter() - t)
            if len(times) >= 3 and min(times[-2:]) > 0.85 * min(times[:-2]):
                break
        for _ in range(repeats):
            t = time.perf_counter()
            model(xb)
            times.append(time.perf_counter() - t)
        cpu = batch / min(times)
    key = json.dumps([recipe.to_dict(), size], sort_keys=True)
    return RunMeasure(Path(run_dir).name, str(cfg.get("model")), size, len(paths), gflop, cpu, load_s, key)


def measure_preprocess(run_dir: str | os.PathLike, images: Sequence[Path], repeats: int = 2,
                       fast_png: bool = True) -> float:
    """Seconds per image, one thread, for exactly what the kernel does per image (decode, recipe, resize):
    the mean over images of each image's best of ``repeats``. ``fast_png=False`` times OpenCV's PNG decode,
    as on an image without imagecodecs."""
    import cv2

    from kaggle_utils.data import decode
    from kaggle_utils.inference.predict import checkpoint_preprocess, fold_checkpoints, load_test_image
    from kaggle_utils.training.checkpoint import load_checkpoint

    path = fold_checkpoints(run_dir)[0]
    ck = load_checkpoint(path)
    recipe = checkpoint_preprocess(ck, path)
    size = int((ck.get("config") or {}).get("size") or recipe.size)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    decoding = contextlib.nullcontext() if fast_png else decode.opencv_png()
    try:
        with decoding:
            load_test_image(str(images[0]), recipe, size)  # warm-up
            best = []
            for p in images:
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    img, why, _ = load_test_image(str(p), recipe, size)  # (image, failure reason, quality flag)
                    times.append(time.perf_counter() - t)
                    if img is None:
                        raise BundleError(f"cannot time preprocessing: {p} failed to load ({why})")
                best.append(min(times))
            return sum(best) / len(best)
    finally:
        cv2.setNumThreads(threads)


def plan_images() -> list[Path]:
    """Real APTOS PNGs (the competition's format) when the shared data is there, else the sample JPEGs."""
    raw = sorted((REPO_ROOT.parent / "shared" / "data" / "raw").glob("aptos_*.png"))
    return raw or sorted((REPO_ROOT / "data" / "sample" / "images").glob("*.jpg"))[:5]


def estimate(runs: Sequence[RunMeasure], preprocess_s: float, n_images: int = 13_000, tta: str = "hflip",
             gpu: str = "t4", fraction: float | None = None, budget_h: float = 9.0,
             vcpus: int = KAGGLE_VCPUS, gpus: int = 2) -> dict[str, Any]:
    """Kernel time = max(GPU forward time, CPU decode time) + fixed overheads (decoding overlaps the GPU).
    With ``gpus`` > 1 the fold models are spread over the GPUs (inference/predict.py), so the forward time
    divides by the GPUs that get a model."""
    from kaggle_utils.inference.predict import tta_views

    profile = GPU_PROFILES[gpu]
    views = tta_views(tta)
    rows, gpu_s = [], 0.0
    for r in runs:
        frac = fraction if fraction is not None else ACHIEVED[gpu][model_family(r.model)]
        img_s = profile.peak_tflops * 1e12 * frac / (r.gflop * 1e9)
        passes = n_images * r.folds * views
        rows.append({**dataclasses.asdict(r), "fraction": frac, "gpu_img_s": img_s, "passes": passes,
                     "gpu_s": passes / img_s})
        gpu_s += passes / img_s
    used = max(1, min(int(gpus), sum(r.folds for r in runs)))
    gpu_s /= used
    recipes = len({r.recipe for r in runs})
    cpu_s = n_images * recipes * preprocess_s / (vcpus * CPU_SCALING)
    overheads = {**OVERHEADS, "load checkpoints (measured here)": sum(r.load_s * r.folds for r in runs)}
    total = max(gpu_s, cpu_s) + sum(overheads.values())
    return {"rows": rows, "gpu": profile, "gpu_key": gpu, "gpus": used, "views": views, "tta": tta, "n_images": n_images,
            "gpu_s": gpu_s, "cpu_s": cpu_s, "recipes": recipes, "preprocess_s": preprocess_s, "vcpus": vcpus,
            "overheads": overheads, "total_s": total, "budget_s": budget_h * 3600,
            "fits": total <= budget_h * 3600}


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_plan(p: dict[str, Any], images_note: str = "") -> str:
    g = p["gpu"]
    head = (f"{'run':<12}{'model':<22}{'px':>5}{'folds':>6}{'TTA':>5}{'GFLOP/img':>11}{'CPU img/s':>11}"
            f"{'GPU img/s':>11}{'passes':>10}{'GPU time':>10}")
    lines = [f"Kernel run-time plan: {p['n_images']:,} test images, TTA {p['tta']} ({p['views']} views), "
             f"{g.name}{' x' + str(p['gpus']) if p.get('gpus', 1) > 1 else ''} ({g.peak_tflops} TFLOP/s "
             f"{g.precision} peak each)", head, "-" * len(head)]
    for r in p["rows"]:
        lines.append(f"{r['name']:<12}{r['model']:<22}{r['size']:>5}{r['folds']:>6}{p['views']:>5}"
                     f"{r['gflop']:>11.2f}{r['cpu_img_s']:>11.1f}{r['gpu_img_s']:>11,.0f}{r['passes']:>10,}"
                     f"{_hms(r['gpu_s']):>10}")
    spread = f" (fold models spread over {p['gpus']} GPUs)" if p.get("gpus", 1) > 1 else ""
    lines.append(f"GPU forward total: {_hms(p['gpu_s'])}{spread}")
    lines.append(f"CPU decode+preprocess: {p['preprocess_s']:.3f} s/img (measured here, 1 thread{images_note}) x "
                 f"{p['n_images']:,} x {p['recipes']} recipe(s) / ({p['vcpus']} vCPUs x {CPU_SCALING}) = "
                 f"{_hms(p['cpu_s'])}")
    lines.append("overheads: " + "; ".join(f"{k} {_hms(v)}" for k, v in p["overheads"].items()))
    verdict = "fits" if p["fits"] else "EXCEEDS THE BUDGET"
    lines.append(f"ESTIMATE: max(GPU {_hms(p['gpu_s'])}, CPU {_hms(p['cpu_s'])}) + overheads "
                 f"{_hms(sum(p['overheads'].values()))} = {_hms(p['total_s'])} of {_hms(p['budget_s'])} "
                 f"({100 * p['total_s'] / p['budget_s']:.1f} %): {verdict}")
    if not p["fits"]:
        lines.append(f"WARNING: the kernel would exceed the {p['budget_s'] / 3600:g} h limit: drop folds/TTA views, "
                     f"use a smaller size, or fewer runs")
    fractions = sorted({(model_family(r["model"]), r["fraction"]) for r in p["rows"]})
    lines += [
        "assumptions:",
        "  GPU time = passes x GFLOP/img / (peak x achieved fraction); achieved fraction "
        + ", ".join(f"{f} {frac:.2f}" for f, frac in fractions) + f" of peak ({g.note}).",
        f"  Decoding runs in {p['vcpus']} Kaggle vCPUs (2 cores x 2 threads, scaling {CPU_SCALING}) at this "
        "machine's per-thread speed, overlapping the GPU; images are decoded once per preprocessing recipe.",
        "  Overheads other than checkpoint loading are assumed constants; GPU img/s are FLOP-count estimates.",
        "  GPU comparison: not possible in this task (no GPU here); measure on Kaggle before trusting the GPU column.",
    ]
    return "\n".join(lines)


def plan(run_dirs: Sequence[str | os.PathLike], n_images: int = 13_000, tta: str = "hflip", gpu: str = "t4",
         fraction: float | None = None, budget_h: float = 9.0, images: Sequence[Path] | None = None,
         gpus: int = 2) -> tuple[dict[str, Any], str]:
    """Measure here, scale to the Kaggle GPU profile; returns (estimate, printable table)."""
    chosen = [Path(p) for p in images] if images else plan_images()
    if not chosen:
        raise BundleError("no images to time preprocessing on; pass --plan-images DIR")
    runs = [measure_run(d) for d in run_dirs]
    # The bundle leaves imagecodecs out (an optional extra): time PNGs the way the kernel will decode them.
    fast_png = "imagecodecs" in image_distributions(read_image_list(IMAGE_LIST))[0]
    pre = max(measure_preprocess(d, chosen, fast_png=fast_png) for d in run_dirs)
    kinds = sorted({p.suffix.lstrip(".").upper() for p in chosen})
    decoder = "imagecodecs" if fast_png else "OpenCV, as the image lacks imagecodecs"
    note = f", {len(chosen)} real {'/'.join(kinds)} images from {chosen[0].parent.name}/, PNG decoder {decoder}"
    p = estimate(runs, pre, n_images, tta, gpu, fraction, budget_h, gpus=gpus)
    return p, format_plan(p, note)
