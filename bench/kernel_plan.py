"""Kaggle kernel run-time plan for trained runs: measured here (CPU), scaled to a Kaggle GPU profile.

Measures per-image preprocessing on real APTOS PNGs (``../shared/data/raw``, the competition's format) and
each run's forward speed and FLOPs (``torch.utils.flop_counter``) at its trained size, then predicts the
kernel's time for the full test set (public 1,928 + ~11,000 private images) as max(GPU, CPU decode) +
overheads. No GPU here: the GPU column is a FLOP-count estimate, not a measurement.

    python bench/kernel_plan.py [RUN_DIR ...] [--images 13000] [--gpu p100|t4] [--tta hflip]

The last line is the ratio of the estimate to the 9 h kernel limit.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from kaggle_utils.kernel import plan as kernel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", default=[str(REPO / "outputs" / "demo" / "runs" / "lite0")])
    ap.add_argument("--images", type=int, default=13_000)
    ap.add_argument("--gpu", choices=sorted(kernel.GPU_PROFILES), default="p100")
    ap.add_argument("--tta", default="hflip")
    ap.add_argument("--budget-hours", type=float, default=9.0)
    args = ap.parse_args()
    missing = [r for r in args.runs if not list(Path(r).glob("fold*/best.pt"))]
    if missing:
        raise SystemExit(f"no trained run at {missing}: run `make demo` (or pass run folders)")
    p, table = kernel.plan(args.runs, args.images, args.tta, args.gpu, budget_h=args.budget_hours)
    print(table)
    print(f"estimate / {args.budget_hours:g} h budget: {p['total_s'] / p['budget_s']:.3f}")


if __name__ == "__main__":
    main()
