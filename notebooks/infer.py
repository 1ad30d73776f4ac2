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
# # Infer: fold checkpoints x TTA -> test predictions per run
# Each run folder holds `fold<k>/best.pt`; every checkpoint knows its model, image size and preprocessing,
# so runs of different sizes mix. Unreadable images still get a row (`status=failed`, with the reason);
# images that are graded but look wrong (tiny, nearly black, no retina found) are listed in
# `flagged_images.csv`. A repeated or blank id in `test_csv` stops here, before any inference.

# %% tags=["parameters"]
run_dirs = ["outputs/demo/runs/lite0"]  # defaults: what `make demo` writes
test_csv = "outputs/demo/data/test.csv"
test_images = None
test_ext = ".png"
out_dir = "outputs/demo/preds"
tta = "hflip"
adapt_bn = 0.0  # share of BatchNorm statistics re-estimated on the test images: 0 off, 1 AdaBN
batch_size = 32
workers = None  # loader threads; None: half the cores
device = "auto"
oof_tta = False  # also predict each fold's validation images with this TTA (out_dir/<run>/oof.csv) for blending

# %%
from pathlib import Path

import pandas as pd

from kaggle_utils import io
from kaggle_utils.data import sources
from kaggle_utils.inference import predict

test = sources.test_table(test_csv, test_images, ext=test_ext)
print(f"{len(test)} test images")

# %%
results = predict.infer(run_dirs, test, out_dir, tta=tta, batch_size=batch_size, workers=workers, device=device,
                        adapt_bn=adapt_bn)
for name, df in results.items():
    print(f"{name}: {int((df['status'] == 'ok').sum())} predicted, {int((df['status'] != 'ok').sum())} failed, "
          f"{int((df['flag'] != '').sum())} flagged")
if oof_tta:
    for run_dir in run_dirs:
        oof = predict.predict_oof(run_dir, tta=tta, batch_size=batch_size, workers=workers, device=device)
        io.write_csv(f"{out_dir}/{Path(run_dir).name}/oof.csv", oof)
failed = io.read_csv(f"{out_dir}/{predict.FAILED_FILE}", text=None)
flagged = io.read_csv(f"{out_dir}/{predict.FLAGGED_FILE}", text=None)
pd.concat([failed.assign(status="failed"), flagged], ignore_index=True)

# %%
ax = pd.DataFrame({n: d["pred"] for n, d in results.items()}).plot.hist(bins=40, alpha=0.5, figsize=(8, 3))
ax.set_xlabel("predicted grade (continuous)");
