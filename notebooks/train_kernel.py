# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # APTOS 2019 training kernel: one config's chain on a Kaggle GPU, offline
# `build_kernel.py --train CONFIG` writes this notebook beside a dataset holding kaggle_utils, the wheels the
# Kaggle image lacks, the config, the chain's notebooks and the ImageNet weights. It installs from that
# dataset, checks the device, plans the config with measured step times (and stops when they exceed the
# budget), runs the chain (preprocess -> [pre-train] -> folds -> infer -> blend) inside the 9 h limit with
# its outputs under `/kaggle/working`, and prints the epoch times it measured. This kernel's output is the
# submission bundle's input: `build_kernel.py OUTPUT` (downloaded) or `--kernel-source` (attached).

# %% tags=["parameters"]
config = "/kaggle/input/kaggle-utils-train/config/kaggle_quickstart.yaml"
smoke = False  # True: 1 epoch of 2 steps at 96 px on 40 images, 2 folds (kernel.training.smoke_config)
plan = True  # first `python -m kaggle_utils.run CONFIG --plan --measure`: stop when it exceeds the budget
require_gpu = True  # stop when there is no CUDA device (the 9 h budget assumes a Kaggle GPU)
prune = True  # drop image caches and last.pt from the output (the submission bundle reads neither)
out_dir = "/kaggle/working"
kernel_id = "kaggleutils/kaggle-utils-train"

# %%
import time

started = time.time()  # the 9 h budget counts from here, the offline install included

# %% tags=["offline-install"]
# Offline install (the same cell in both kernels: kaggle_utils/kernel/notebook.py; build_kernel.py
# writes DATASET and PACKAGES). The kernel runs with the internet off, so kaggle_utils and the packages the
# Kaggle image lacks come from the attached dataset's wheels/: `pip install --no-index --find-links
# /kaggle/input/<DATASET>/wheels <PACKAGES>`. Should pip's resolver trip over the image's own metadata (a
# package an image package declares but lacks), it retries without resolving (PACKAGES is the whole bundle)
# and says so; a failed install stops the notebook here.
import importlib
import os
import subprocess
import sys

DATASET = "kaggle-utils-train"
PACKAGES = ["kaggle_utils"]
KAGGLE_INPUT = os.environ.get("KAGGLE_UTILS_INPUT", "/kaggle/input")  # only build_kernel.py --verify sets it
bundle = f"{KAGGLE_INPUT}/{DATASET}"
pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", f"{bundle}/wheels", *PACKAGES]
print(" ".join(pip))
done = subprocess.run(pip, capture_output=True, text=True)
if done.returncode:
    print(f"OFFLINE-INSTALL-FALLBACK: pip could not resolve dependencies, retrying with --no-deps:\n{done.stderr}")
    done = subprocess.run([*pip, "--no-deps"], capture_output=True, text=True)
print(done.stdout[-2000:])
if done.returncode:
    raise RuntimeError(f"offline install failed (pip exit {done.returncode}):\n{done.stderr[-3000:]}")
importlib.invalidate_caches()

# %%
# The weights manifest and files are the dataset's: an installed kaggle_utils has no repository beside it.
os.environ["KAGGLE_UTILS_WEIGHTS"] = os.pathsep.join(
    p for p in (f"{bundle}/weights", os.environ.get("KAGGLE_UTILS_WEIGHTS")) if p)
os.environ["KAGGLE_UTILS_MANIFEST"] = f"{bundle}/weights/manifest.json"
notebooks = f"{bundle}/notebooks"

# %%
import torch

if torch.cuda.is_available():
    gpus = [torch.cuda.get_device_properties(k) for k in range(torch.cuda.device_count())]
    for k, props in enumerate(gpus):  # the chain trains one step per GPU (devices: auto)
        print(f"cuda:{k}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    props = gpus[0]
    device = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {len(gpus)} GPU(s))"
elif require_gpu:
    raise RuntimeError("no CUDA device: turn the GPU accelerator on in the kernel's settings (its "
                       "kernel-metadata.json asks for one), or pass require_gpu=False to train on the CPU")
else:
    device = f"CPU ({os.cpu_count()} cores): no GPU, require_gpu=False"
print(f"device: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}")

# %%
from pathlib import Path

import yaml

from kaggle_utils import io
from kaggle_utils.kernel.training import read_config, smoke_config

cfg = read_config(config)
if smoke:
    cfg = smoke_config(cfg)
effective = io.write_text(Path(out_dir) / "train_config.yaml", yaml.safe_dump(cfg, sort_keys=False))
budget_s = float(cfg.get("budget_hours", 9)) * 3600
print(f"config {config}{' with the smoke override' if smoke else ''} -> {effective}; workdir {cfg['workdir']}; "
      f"budget {budget_s / 3600:.2f} h from the install")

# %%
if plan:
    done = subprocess.run([sys.executable, "-m", "kaggle_utils.run", str(effective), "--plan", "--measure"],
                          capture_output=True, text=True)
    print(done.stdout)
    print(done.stderr, file=sys.stderr)
    if done.returncode == 3:
        raise RuntimeError(f"stopped before training: the plan measured on {device} exceeds the budget of "
                           f"{budget_s / 3600:.1f} h (table above); train fewer models, folds or epochs, or at "
                           "smaller sizes, and rebuild the bundle")
    if done.returncode:
        raise RuntimeError(f"the plan failed (exit {done.returncode}): {done.stderr.strip()[-1000:]}")
    print(f"[plan] the plan measured on {device} fits the budget")

# %%
from kaggle_utils.run.chain import run_chain

left = budget_s - (time.time() - started)
print(f"running the chain with {left / 3600:.2f} h of budget left")
log = run_chain(effective, budget_s=left, notebooks=Path(notebooks))
work = Path(cfg["workdir"])

# %%
from kaggle_utils.kernel.training import epoch_times, format_epoch_times, prune_outputs

print(format_epoch_times(epoch_times(work), device))
if prune:
    removed = prune_outputs(work)
    print(f"pruned {removed['files']} files ({removed['bytes'] / 1e6:.0f} MB): image caches and last.pt")
print(f"submission: {log['outputs']['submission']}")
print(f"hand-over to the submission bundle: attach this kernel ({kernel_id}) to it, or download its output:\n"
      f"  kaggle kernels output {kernel_id} -p outputs/kaggle_train\n"
      f"  python build_kernel.py outputs/kaggle_train --owner YOUR_KAGGLE_NAME")
