"""The chain with one device slot vs two, side by side in one run: wall time of the same config.

On Kaggle's T4 x2 ``devices: auto`` gives every GPU a training step; on the CPU ``devices: N`` splits the cores
(each slot's training uses cores // N threads), so this measures what running folds side by side buys over
one fold at a time with every core, on the config given (default ``configs/demo.yaml``: 4 folds of Lite0).
Both runs start from empty workdirs in a temporary folder (preprocessing included), one after the other,
nothing else in between; the ratio is one slot's wall time over two slots'. Their submissions differ in
the last bits (1 vs 2 threads per fold change the float sums); ``tests/test_slots.py`` checks that equal
thread counts give equal metrics and submissions.

    python bench/slots.py [--config configs/demo.yaml] [--slots 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_chain(cfg: dict, folder: Path, devices: int) -> tuple[float, dict]:
    """Wall seconds of the whole chain with ``devices`` slots, and its run log."""
    work = folder / f"devices{devices}"
    path = folder / f"devices{devices}.yaml"
    path.write_text(yaml.safe_dump({**cfg, "workdir": str(work), "devices": devices}))
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kaggle_utils.run", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"the chain with devices: {devices} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, json.loads((work / "run_log.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--slots", type=int, default=2)
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    for key in ("csv", "images"):  # relative paths are the repo's
        if key in cfg.get("data", {}) and not Path(cfg["data"][key]).is_absolute():
            cfg["data"][key] = str(REPO / cfg["data"][key])
    with tempfile.TemporaryDirectory(prefix="bench_slots_") as name:
        folder = Path(name)
        results = {n: run_chain(cfg, folder, n) for n in (1, args.slots)}
    print(f"{'slots':>5} {'wall s':>8} {'train steps s (sum)':>20} {'steps':>6}")
    for n, (wall, log) in results.items():
        train = sum(s["seconds"] for k, s in log["steps"].items() if k.startswith("train:"))
        print(f"{n:>5} {wall:8.1f} {train:20.1f} {len(log['steps']):>6}")
    one, many = results[1][0], results[args.slots][0]
    print(f"ratio: 1 slot / {args.slots} slots wall time = {one / many:.2f}x ({Path(args.config).name}, "
          f"{os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
