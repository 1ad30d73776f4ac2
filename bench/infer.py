"""End-to-end inference throughput vs the model's forward alone, images/s side by side.

End to end: :func:`kaggle_utils.inference.predict.predict_runs` on real photographs (``../shared/data/idrid_train``,
1024x680 JPEGs): read, reduced-scale decode, retina crop, resize, batch, forward; TTA off. Image loading
runs in background threads while the model computes. Forward alone: the same model (channels-last, as
inference loads it), batch and number of images, on uint8 tensors already in memory (normalisation included, as both paths do it on the device).
The two alternate for ``--rounds`` rounds (order flipped each round) so machine load hits both alike; each
side's figure is its median round, and the ratio (last line) is the median of per-round ratios.

    python bench/infer.py [--model efficientnet-lite0] [--size 224] [--batch 32] [--images 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from kaggle_utils.data.preprocess import PreprocessConfig, preprocess_image  # noqa: E402
from kaggle_utils.inference import predict as infer  # noqa: E402
from kaggle_utils.models import create_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "idrid_train"))
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=infer.default_workers(), help="loader threads")
    args = ap.parse_args()

    labels = pd.read_csv(Path(args.data) / "labels.csv").head(args.images)
    table = pd.DataFrame({"id": labels["id_code"],
                          "path": [str(Path(args.data) / "images" / f"{i}.jpg") for i in labels["id_code"]]})
    torch.manual_seed(0)
    model = create_model(args.model, head="regression").eval().to(memory_format=torch.channels_last)
    cfg = PreprocessConfig(size=args.size)
    run = infer.Run("bench", Path("."), [model], [0], cfg, args.size, tuple(model.mean), tuple(model.std))
    tensors = torch.stack([torch.from_numpy(preprocess_image(p, cfg)).permute(2, 0, 1) for p in table["path"]])
    n = len(table)
    print(f"{args.model} @ {args.size}px, batch {args.batch}, {n} images, {torch.get_num_threads()} torch threads, "
          f"{args.workers} loader threads")

    def end_to_end() -> float:
        t0 = time.perf_counter()
        infer.predict_runs([run], table, tta="none", batch_size=args.batch, workers=args.workers, progress=False)
        return n / (time.perf_counter() - t0)

    def forward_only() -> float:
        t0 = time.perf_counter()
        for start in range(0, n, args.batch):
            infer.predict_batch([model], tensors[start:start + args.batch], run.mean, run.std, "none")
        return n / (time.perf_counter() - t0)

    end_to_end(), forward_only()  # warm-up: allocator, thread pools, page cache
    e2e, fwd, ratios = [], [], []
    for r in range(args.rounds):
        pair = (end_to_end, forward_only) if r % 2 == 0 else (forward_only, end_to_end)
        a, b = (f() for f in pair)
        e, f = (a, b) if r % 2 == 0 else (b, a)
        e2e.append(e)
        fwd.append(f)
        ratios.append(e / f)
        print(f"round {r + 1}: end-to-end {e:6.1f} img/s   forward only {f:6.1f} img/s   ratio {e / f:.3f}")
    print(f"end-to-end (read + preprocess + forward): {statistics.median(e2e):.1f} images/s")
    print(f"forward alone (tensors in memory):        {statistics.median(fwd):.1f} images/s")
    print(f"ratio (end-to-end/forward): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
