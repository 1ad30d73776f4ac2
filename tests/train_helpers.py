"""Shared by test_data / test_train / test_ddp: small real-image tables, a tiny registered model, and a
script entry point so training can run (and be SIGKILLed, or launched by torchrun) in a subprocess.

    python tests/train_helpers.py train CFG.json [--kill-at GLOBAL_STEP] [--dump WEIGHTS.pt]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TINY_MODEL = "tiny-cnn-test"


def register_tiny_model() -> str:
    """A 3-conv CNN through the real registry/GradingModel (pooling, dropout, heads): fast enough for resume,
    deadline and DDP tests on 2 CPU cores, with BatchNorm and dropout so RNG and buffers are exercised."""
    from kaggle_utils.models import Backbone, register_model

    def build(**_: object) -> Backbone:
        layers: list[nn.Module] = []
        ch = 3
        for out in (8, 16, 32):
            layers += [nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        return Backbone(nn.Sequential(*layers), num_features=ch, features="forward")

    register_model(TINY_MODEL, overwrite=True, input_size=64, dropout=0.3, source="tests")(build)
    return TINY_MODEL


def pick_rows(shared_data: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` IDRiD images spread over the grades (round-robin), as ``id, path, grade``."""
    root = Path(shared_data) / "idrid_train"
    labels = pd.read_csv(root / "labels.csv")
    labels = labels.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    labels["rank"] = labels.groupby("diagnosis").cumcount()
    labels = labels.sort_values(["rank", "diagnosis"]).head(n)
    paths = [str(root / "images" / f"{i}.jpg") for i in labels["id_code"]]
    return pd.DataFrame({"id": labels["id_code"].astype(str).to_numpy(), "path": paths,
                         "grade": labels["diagnosis"].astype(int).to_numpy()})


def resized_table(shared_data: Path, out_dir: Path, n: int, size: int, n_folds: int = 4) -> pd.DataFrame:
    """Real photographs resized to size x size PNGs (plain cv2, no cache machinery), with a ``fold`` column."""
    rows = pick_rows(shared_data, n)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for rid, src in zip(rows["id"], rows["path"], strict=True):
        dst = out_dir / f"{rid}.png"
        if not dst.exists():
            img = cv2.imread(src, cv2.IMREAD_COLOR)
            cv2.imwrite(str(dst), cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
        paths.append(str(dst))
    table = rows.assign(path=paths)
    table["fold"] = np.arange(len(table)) % n_folds
    return table


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _train(args: argparse.Namespace) -> None:
    """train_fold exactly as users call it (so under torchrun too), keeping the trainer for --dump."""
    from kaggle_utils.training import config, loop

    register_tiny_model()
    cfg = config.TrainConfig.from_file(args.config)
    table = pd.read_csv(args.table, dtype={"id": str}) if args.table else None
    seen: dict = {}

    def on_step(info: dict) -> None:
        seen["trainer"] = info["trainer"]
        if info["global_step"] == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    result = loop.train_fold(cfg, table, on_step=on_step)
    trainer = seen["trainer"]
    if args.dump:
        state = {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}
        dump = Path(args.dump.replace("RANK", str(trainer.dist.rank)))
        torch.save({"state": state, "digest": weights_digest(state), "result": result}, dump)
    if trainer.dist.rank == 0:
        print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train")
    p.add_argument("config")
    p.add_argument("--table")
    p.add_argument("--kill-at", type=int)
    p.add_argument("--dump", help="write weights here after training; RANK is replaced by the rank")
    args = parser.parse_args(argv)
    _train(args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
