"""Training speed table: images/s of Lite0/1/2 at 128-224 px under {fp32, bf16 autocast} x {contiguous,
channels_last}, side by side, with the achieved GFLOP/s against this machine's measured matmul peak.

Each cell is the bare optimiser step the Trainer runs (forward -> MSE on the regression head -> backward ->
Adam step) on a batch of real fundus photographs already in memory, so the table measures the model's compute
in each precision and memory layout, not data loading (bench/train.py measures the loop's overhead). For one
model and size the four variants alternate step by step (order rotated every round) after a warm-up of each,
so load from other processes hits them alike; a cell is the median over rounds. Achieved GFLOP/s counts a
training step as 3x the forward FLOPs (torch's FlopCounterMode); the peak is a 2048^3 matmul in fp32 and
bf16 on the same threads. The last line compares the new CPU default (what ``amp``/``channels_last`` "auto"
choose here, kaggle_utils.training.precision) with the old one (fp32, contiguous) for Lite0 at 224: a ratio
measured in this run.

    python bench/train_speed.py [--models efficientnet-lite0,...] [--sizes 128,160,192,224] [--rounds 4]
                                [--batch 16] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from kaggle_utils.models import create_model  # noqa: E402
from kaggle_utils.run.estimate import forward_gflop  # noqa: E402
from kaggle_utils.training import precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]  # (precision, channels_last)


def real_batch(n: int, size: int) -> torch.Tensor:
    """``n`` real photographs (IDRiD beside the checkout, else data/sample), normalised, NCHW float32."""
    folders = [REPO.parent / "shared" / "data" / "idrid_train" / "images", REPO / "data" / "sample" / "images"]
    folder = next(f for f in folders if f.is_dir())
    files = sorted(folder.glob("*.jpg"))[:n]
    imgs = [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA) for f in files]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.45) / 0.25


class Step:
    """One model in one precision and layout: ``run()`` is one optimiser step on the batch."""

    def __init__(self, model: str, x: torch.Tensor, dtype: str, channels_last: bool, compile_: bool = False):
        torch.manual_seed(0)
        self.net = create_model(model, pretrained=False).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=fmt)
        self.x = x.contiguous(memory_format=fmt)
        self.y = torch.linspace(0, 4, len(x))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4)
        self.amp = dtype == "bf16"
        self.fn = torch.compile(self.net) if compile_ else self.net

    def run(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            loss = nn.functional.mse_loss(self.fn(self.x).float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n^3 matmul in ``dtype`` on torch's threads: the hardware's practical ceiling here."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def measure(model: str, size: int, batch: int, rounds: int) -> dict[tuple[str, bool], float]:
    x = real_batch(batch, size)
    steps = {v: Step(model, x, *v) for v in VARIANTS}
    for s in steps.values():  # warm-up: oneDNN primitives, allocator
        s.run()
    times: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % 4:] + VARIANTS[:r % 4]
        for v in order:
            times[v].append(timed(steps[v].run))
    return {v: batch / statistics.median(t) for v, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    parser.add_argument("--sizes", default="128,160,192,224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (Lite0, 224, new default)")
    args = parser.parse_args()

    auto = precision.cpu_defaults()
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; matmul peak fp32 {peak['fp32']:.0f} GFLOP/s, "
          f"bf16 {peak['bf16']:.0f} GFLOP/s")
    print(f"CPU 'auto' here: amp={auto.amp} ({auto.amp_dtype}), channels_last={auto.channels_last} ({auto.why})")
    head = f"{'model':<18} {'px':>4}  " + "  ".join(f"{p}/{'CL' if cl else 'contig':<6}" for p, cl in VARIANTS)
    print(head + "   best: GFLOP/s (of peak)")
    table = {}
    for model in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            ips = measure(model, size, args.batch, args.rounds)
            table[(model, size)] = ips
            best = max(ips, key=ips.get)
            achieved = 3 * forward_gflop(model, "regression", size) * ips[best]
            print(f"{model:<18} {size:>4}  " + "  ".join(f"{ips[v]:>11.2f}" for v in VARIANTS)
                  + f"   {best[0]}/{'CL' if best[1] else 'contig'}: {achieved:.0f} ({achieved / peak[best[0]]:.0%})",
                  flush=True)
    if args.compile:
        x = real_batch(args.batch, 224)
        try:
            step = Step("efficientnet-lite0", x, auto.amp_dtype if auto.amp else "fp32", auto.channels_last, True)
            step.run()
            print(f"torch.compile, lite0 224, new default: {args.batch / statistics.median(timed(step.run) for _ in range(args.rounds)):.2f} img/s")
        except Exception as err:  # noqa: BLE001 - report, not crash: compile needs a C++ toolchain
            print(f"torch.compile failed here: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    key = ("efficientnet-lite0", 224)
    if key in table:
        new = ("bf16" if auto.amp else "fp32", auto.channels_last)
        bf16 = table[key][("bf16", True)] / table[key][("fp32", True)]
        print(f"bf16 autocast vs fp32 (both channels_last), Lite0 at 224: {bf16:.2f}x")
        print(f"new CPU default ({new[0]}, {'channels_last' if new[1] else 'contiguous'}) vs old (fp32, contiguous), "
              f"Lite0 at 224: {table[key][new] / table[key][('fp32', False)]:.2f}x")


if __name__ == "__main__":
    main()
