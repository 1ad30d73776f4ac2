"""Training throughput: the project's loop (kaggle_utils.training.loop) vs a bare PyTorch loop, images/s side by side.

Project: ``Trainer.train_epoch`` exactly as ``train_fold`` runs it - in-memory FundusDataset (uint8 images,
normalised per sample), resumable sampler, DataLoader, LR schedule, loss bookkeeping, deadline/checkpoint
votes, logging every ``log_every`` steps - with ``augmentation="none"`` and no mid-epoch checkpoints (the
defaults' time-based checkpoint is every 20 min, far beyond a chunk), inside train_fold's determinism settings.
Bare: the same model (same seeded init), batch, optimiser (Adam) and loss (MSE) on a tensor already normalised
in memory (on the device), indexing a random permutation: ``model(x) -> loss -> zero_grad -> backward -> step``.
On CUDA both use AMP + channels_last (the project's "auto"), so the ratio measures loop overhead, not precision.

The two alternate in chunks of ``--steps`` optimiser steps (order flipped every round) after a warm-up of each,
so load from other processes hits both alike: on a shared 2-core machine single steps vary 3-5x with the
neighbours' load, while two adjacent chunks see nearly the same load. The ratio is the median over rounds of
project/bare throughput; each side's images/s is its median chunk. Chunks default to 1 step on CPU (~2.5 s with
lite0 at 224) and 25 on CUDA, where a chunk also restarts the DataLoader's iterator (one epoch boundary) and
so must be long enough not to over-count that.

    python bench/train.py [--model efficientnet-lite0] [--size 224] [--batch 16] [--rounds 12] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from kaggle_utils.training import checkpoint, config, loop

REPO = Path(__file__).resolve().parents[1]


def real_images(n: int, size: int, out: Path) -> pd.DataFrame:
    """``n`` real fundus photographs resized to size x size (IDRiD beside the checkout, else data/sample)."""
    candidates = [REPO.parent / "shared" / "data" / "idrid_train" / "images", REPO / "data" / "sample"]
    folder = next((c for c in candidates if c.is_dir() and any(c.iterdir())), None)
    if folder is None:
        raise SystemExit(f"no images found in {candidates}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    files = [files[i % len(files)] for i in range(n)]
    paths = []
    for i, src in enumerate(files):
        dst = out / f"img{i:04d}.png"
        cv2.imwrite(str(dst), cv2.resize(cv2.imread(str(src)), (size, size), interpolation=cv2.INTER_AREA))
        paths.append(str(dst))
    grades = np.arange(n) % 5
    folds = np.where(np.arange(n) < max(1, n // 10), 0, 1)  # a small validation fold; it is never run here
    return pd.DataFrame({"id": [f"img{i:04d}" for i in range(n)], "path": paths, "grade": grades, "fold": folds})


class Bare:
    """The textbook loop on the same data, already a normalised tensor on the device."""

    def __init__(self, trainer: loop.Trainer, seed: int):
        cfg = trainer.cfg
        checkpoint.seed_everything(cfg.seed)
        self.device = trainer.device
        self.model = loop.build_model(cfg).to(self.device)
        self.channels_last, self.amp = trainer.channels_last, trainer.amp
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        ds = trainer.train_ds
        self.x = torch.stack([ds.normalise(img) for img in ds.images]).to(self.device, memory_format=fmt)
        self.y = ds.targets.to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.loss_fn = nn.MSELoss()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.batch = cfg.batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def run(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            if len(self.order) < self.batch:
                self.order = torch.randperm(len(self.x), generator=self.gen)
            idx, self.order = self.order[: self.batch], self.order[self.batch :]
            idx = idx.to(self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss = self.loss_fn(self.model(self.x[idx]), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def project_runner(trainer: loop.Trainer, steps: int):
    """``steps`` optimiser steps of the real loop: one short 'epoch' of train_epoch per call."""
    trainer.steps_per_epoch = steps

    def run() -> None:
        trainer.step, trainer.epoch_loss_sum, trainer.epoch_count, trainer.epoch_time = 0, 0.0, 0, 0.0
        with checkpoint.deterministic(checkpoint.wants_determinism(trainer.cfg)):
            assert trainer.train_epoch()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        trainer.epoch += 1

    return run


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per chunk (1 CPU, 25 CUDA)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    args.steps = args.steps or (25 if cuda else 1)
    n_images = max(args.batch * args.steps * 10 // 9 + args.batch, 80)
    with tempfile.TemporaryDirectory() as tmp:
        table = real_images(n_images, args.size, Path(tmp))
        cfg = config.TrainConfig(
            out_dir=str(Path(tmp) / "out"), model=args.model, size=args.size, batch_size=args.batch, lr=1e-4,
            epochs=1000, warmup_epochs=0, augmentation="none", in_memory=True, progress=False,
            num_workers=min(4, os.cpu_count() or 1) if cuda else 0, device="cuda" if cuda else "cpu",
            checkpoint_every_steps=None)
        trainer = loop.Trainer(cfg, table)
        if trainer.sampler.shard_size < args.batch * args.steps:
            raise SystemExit(f"{trainer.sampler.shard_size} training images < one chunk of {args.steps} steps")
        bare = Bare(trainer, cfg.seed)
        project = project_runner(trainer, args.steps)
        device = f"{trainer.device} (amp={trainer.amp}, channels_last={trainer.channels_last})"
        print(f"{args.model} {args.size}px batch {args.batch} on {device}, torch threads {torch.get_num_threads()}")
        project()  # warm-up: allocator, kernels/oneDNN primitives, worker start
        bare.run(args.steps)

        per_chunk = args.batch * args.steps
        ips: dict[str, list[float]] = {"project": [], "bare": []}
        for r in range(args.rounds):
            order = [("project", project), ("bare", lambda: bare.run(args.steps))]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                ips[name].append(per_chunk / timed(fn))
            print(f"round {r + 1}/{args.rounds}: project {ips['project'][-1]:.2f} img/s, "
                  f"bare {ips['bare'][-1]:.2f} img/s", flush=True)
    ratios = [p / b for p, b in zip(ips["project"], ips["bare"], strict=True)]
    print(f"project loop: {statistics.median(ips['project']):.2f} images/s "
          f"(median of {args.rounds} chunks of {per_chunk} images)")
    print(f"bare loop:    {statistics.median(ips['bare']):.2f} images/s")
    print(f"per-round ratios: {' '.join(f'{r:.2f}' for r in ratios)}")
    print(f"ratio (project/bare): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
