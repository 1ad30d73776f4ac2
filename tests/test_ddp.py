"""The training entry point under ``torchrun --nproc_per_node 2`` on CPU (gloo): both ranks train on their own
shards of the epoch and end with identical weights; only rank 0 writes the artifacts."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from train_helpers import TINY_MODEL, register_tiny_model, resized_table

from kaggle_utils.training.checkpoint import load_checkpoint, seed_everything
from kaggle_utils.training.config import TrainConfig
from kaggle_utils.training.loop import build_model

HELPERS = Path(__file__).with_name("train_helpers.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_end_with_identical_weights(shared_data, tmp_path):
    if not TORCHRUN.exists():
        pytest.skip(f"no torchrun beside {sys.executable}")
    table = resized_table(shared_data, tmp_path / "img", n=24, size=64)  # fold 0: 6 val, 18 train = 9 per rank
    table.to_csv(tmp_path / "table.csv", index=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "out"), model=TINY_MODEL, pretrained=False, size=64, epochs=2,
                      batch_size=3, max_steps_per_epoch=2, lr=3e-3, sampler_rates=[1, 2, 2, 2, 2], num_workers=0,
                      log_every=1, progress=False, seed=5)
    cfg_path = cfg.to_json(tmp_path / "cfg.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONHASHSEED": "0"}
    cmd = [str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HELPERS), "train", str(cfg_path),
           "--table", str(tmp_path / "table.csv"), "--dump", str(tmp_path / "weights_RANK.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    dumps = [torch.load(tmp_path / f"weights_{r}.pt", weights_only=False) for r in (0, 1)]
    for r, d in enumerate(dumps):
        assert d["result"]["status"] == "completed" and d["result"]["global_step"] == 4, (r, d["result"])
    a, b = dumps[0]["state"], dumps[1]["state"]
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert dumps[0]["digest"] == dumps[1]["digest"]
    # rank 0 saved that state, and training moved it away from the (seeded) initialisation
    ck = load_checkpoint(tmp_path / "out" / "last.pt")
    assert all(torch.equal(ck["model"][k], a[k]) for k in a)
    register_tiny_model()
    seed_everything(cfg.seed)
    init = build_model(cfg).state_dict()
    assert not torch.equal(init["fc.weight"], a["fc.weight"])
    assert ck["sampler"]["world_size"] == 2 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # per-rank dropout streams
    oof = pd.read_csv(tmp_path / "out" / "oof.csv")
    assert len(oof) == 6  # validation gathered from both ranks' shards
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2]
