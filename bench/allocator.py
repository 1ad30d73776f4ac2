"""glibc's default malloc vs kept freed memory (kaggle_utils.training.allocator), side by side on the CPU.

Each side runs in its own child process (the setting is process-wide), alternating for ``--rounds`` rounds
with the order flipped each round: inference (``predict_batch``, the infer step's path: channels_last, hflip
TTA, batch 32) in ms per image and view with the minor page faults of that whole measurement (model build,
warm-up and timed batches), then training (the Trainer's optimiser step at batch 16, and its validation
pass), on real APTOS photographs. Medians over rounds; the last line is the inference ratio.

    python bench/allocator.py [--model efficientnet-lite0] [--size 224] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "aptos2019_ben224" / "train_images"
SIDES = {"glibc default": "default", "kept (the package's)": None}


def child(model: str, size: int) -> dict[str, float]:
    """One side's numbers, in this process (the parent sets the environment)."""
    import resource

    import torch

    from kaggle_utils.run import measure

    pngs = [str(p) for p in sorted(IMAGES.glob("*.jpg"))[:64]]
    dev = torch.device("cpu")
    run = {"model": model, "head": "regression", "size": size}
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    infer = measure.measure_infer(run, 32, "hflip", pngs, dev)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    params = {"model": model, "head": "regression", "size": size, "batch_size": 16, "epochs": 1,
              "channels_last": True, "num_workers": 0, "lr": 1e-3}
    train = measure.measure_train(params, pngs, dev, Path(tempfile.mkdtemp()))
    return {"infer_ms": 1e3 * infer.view_s, "faults": faults, "step_s": train.step_s, "val_ms": 1e3 * train.val_img_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.size)))
        return
    if not IMAGES.is_dir():
        sys.exit(f"error: {IMAGES} not found (the APTOS photographs in ../shared/data)")
    results: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for r in range(args.rounds):
        for side in list(SIDES)[:: 1 if r % 2 == 0 else -1]:
            env = {k: v for k, v in os.environ.items() if k != "KAGGLE_UTILS_MALLOC"}
            if SIDES[side]:
                env["KAGGLE_UTILS_MALLOC"] = SIDES[side]
            out = subprocess.run([sys.executable, __file__, "--child", "--model", args.model, "--size",
                                  str(args.size)], env=env, capture_output=True, text=True, check=True)
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {side}: {results[side][-1]}", flush=True)
    med = {side: {k: statistics.median(row[k] for row in rows) for k in rows[0]} for side, rows in results.items()}
    print(f"\n{args.model} @{args.size}, {args.rounds} rounds, {os.cpu_count()} cores; medians")
    for side, m in med.items():
        print(f"  {side:<22} infer {m['infer_ms']:6.1f} ms/image-view ({m['faults']:8.0f} page faults in all)  "
              f"train {m['step_s']:.3f} s/step  validation {m['val_ms']:.1f} ms/img")
    base, kept = med["glibc default"], med["kept (the package's)"]
    print(f"train step: {base['step_s'] / kept['step_s']:.2f}x, validation: {base['val_ms'] / kept['val_ms']:.2f}x")
    print(f"inference, kept freed memory vs glibc default: {base['infer_ms'] / kept['infer_ms']:.2f}x faster")


if __name__ == "__main__":
    main()
