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
# # Preprocess: labels -> cached, preprocessed images -> duplicate-aware folds
# Reads a label source (APTOS, EyePACS, IDRiD, Messidor or a generic CSV), preprocesses every photograph once
# into `out_dir` (resumable: rerun to finish an interrupted run) and writes `folds.csv`. With `holdout > 0`,
# that many images are held back (stratified, duplicate groups intact) as `test.csv` for a local test run.

# %% tags=["parameters"]
source = "idrid"
labels_csv = "data/sample/labels.csv"
images_dir = "data/sample/images"
out_dir = "outputs/cache"
size = 512
crop = True
circle = False
ben_graham = False
clahe = False
framing = None
workers = 2
n_folds = 5
seed = 0
holdout = 0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from kaggle_utils import cache, folds, io, sources
from kaggle_utils.preprocess import PreprocessConfig

out = Path(out_dir)
table, problems = sources.load_source(source, labels_csv, images_dir, on_error="skip", return_report=True)
print(f"{len(table)} labelled images from {labels_csv}; {len(problems)} row(s) skipped")
problems.head(20)

# %%
table = folds.add_duplicate_groups(table)
print(f"{int(table['dup_group'].duplicated(keep=False).sum())} images share a duplicate group")
folds.conflicting_groups(table)

# %%
if holdout:
    table, test = folds.holdout_split(table, holdout, seed=seed)
    io.write_csv(out / "test.csv", test[["id", "path", "grade"]])
    print(f"held back {len(test)} images as {out / 'test.csv'}")

cfg = PreprocessConfig(size=size, crop=crop, circle=circle, ben_graham=ben_graham, clahe=clahe, framing=framing)
manifest = cache.build_cache(table, out, cfg, workers=workers)
print(cache.summary_line(manifest, out))

# %%
cached = cache.load_cache(out)  # the manifest keeps the table's columns, dup_group included
fold_table = folds.make_folds(cached, n_folds=n_folds, seed=seed)
folds.write_folds(fold_table, out / "folds.csv")
folds.fold_distribution(fold_table)

# %%
rng = np.random.default_rng(seed)
show = cached.iloc[rng.permutation(len(cached))[:8]]
fig, axes = plt.subplots(2, 4, figsize=(12, 6))
for ax, (_, row) in zip(axes.flat, show.iterrows(), strict=False):
    ax.imshow(plt.imread(row["cache_path"]))
    ax.set_title(f"{row['id']} grade {row['grade']}")
    ax.axis("off")
io.write_figure(out / "preprocess_examples.png", fig)
