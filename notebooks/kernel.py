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
# # APTOS 2019 submission: fold checkpoints x TTA -> OOF-fitted blend -> submission.csv
# Every `models/<run>/fold<k>/best.pt` knows its architecture, image size and preprocessing; each run's
# `oof.csv` files fit the blend weights and QWK thresholds that turn test predictions into grades 0-4.
# Unreadable test images still get a row (the most common training grade). `thresholds = "prior_shift"` refits
# the cut points for the test set's grade distribution, estimated from the test predictions alone (no labels).

# %% tags=["parameters"]
models_dir = "/kaggle/input/kaggle-utils-aptos-models/models"
test_csv = "/kaggle/input/aptos2019-blindness-detection/test.csv"
test_images = "/kaggle/input/aptos2019-blindness-detection/test_images"
test_ext = ".png"
out_dir = "/kaggle/working"
tta = "hflip"
adapt_bn = 0.0  # share of BatchNorm statistics re-estimated on the test images: 0 off, 1 AdaBN
batch_size = 32
workers = 4
device = "auto"
method = "qwk"
thresholds = "oof"  # oof | prior_shift
prior_method = "em"  # em | bbse

# %%
# Start clean: a run that fails or is interrupted must not leave an older submission.csv looking current, so
# it goes first (the last cell writes the new one atomically: a temp file renamed over the name).
import os

stale = os.path.join(out_dir, "submission.csv")
if os.path.exists(stale):
    os.remove(stale)
    print(f"removed {stale} (an earlier run's)")

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

DATASET = "kaggle-utils-aptos-models"
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
from pathlib import Path

from kaggle_utils.data import sources
from kaggle_utils.inference import ensemble, predict

run_dirs = sorted(str(p) for p in Path(models_dir).iterdir() if p.is_dir())
names = [Path(d).name for d in run_dirs]
test = sources.test_table(test_csv, test_images, ext=test_ext)
print(f"{len(test)} test images; runs {names}")

# %%
preds_dir = Path(out_dir) / "preds"
results = predict.infer(run_dirs, test, preds_dir, tta=tta, batch_size=batch_size, workers=workers, device=device,
                        adapt_bn=adapt_bn)
for name, df in results.items():
    print(f"{name}: {int((df['status'] == 'ok').sum())} predicted, {int((df['status'] != 'ok').sum())} unreadable")

# %%
result = ensemble.blend_runs(dict(zip(names, run_dirs, strict=True)), {n: preds_dir / n for n in names},
                             test["id"], method=method, thresholds=thresholds, prior_method=prior_method)
path = ensemble.write_submission(result.submission, Path(out_dir) / "submission.csv")
print(f"OOF QWK {result.oof_qwk:.4f}; weights {result.weights}; thresholds {[round(float(t), 3) for t in result.thresholds]}")
if result.prior is not None:
    print(f"thresholds in use: {result.threshold_mode}; OOF {[round(float(t), 3) for t in result.thresholds_oof]}, "
          f"prior_shift {[round(float(t), 3) for t in result.thresholds_prior_shift]}")
    print(result.prior.table().round(3).to_string(index=False))
print(f"{path}: {len(result.submission)} rows")
result.submission["diagnosis"].value_counts().sort_index()
