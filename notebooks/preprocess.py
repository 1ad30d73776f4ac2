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
# # Preprocess: label sources -> one table with folds -> cached, preprocessed images
# Reads one label source (APTOS, EyePACS, IDRiD, Messidor or a generic CSV) or a list of them (`sources`),
# each with its role (`competition`: folds scored; `external`: training only, e.g. DR 2015 for pre-training)
# and its own preprocessing (`preprocessed: true` = resize only). Duplicates are found across all sources;
# an external image that duplicates a competition image is dropped and listed. Folds (stratified, duplicate
# groups and EyePACS patients kept together) are written to `table_dir/folds.csv`, then every image is
# preprocessed once into `out_dir/<source>/` (resumable: rerun to finish an interrupted run). With
# `holdout > 0`, that many competition images are held back as `test.csv` for a local test run.

# %% tags=["parameters"]
source = "idrid"
labels_csv = "data/sample/labels.csv"
images_dir = "data/sample/images"
sources = None  # a list of source dicts (name, reader, csv, images, role, ...) instead of the three above
out_dir = "outputs/cache"
table_dir = None  # where folds.csv / test.csv / dropped_duplicates.csv go; None: out_dir
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
pretrain_val_fraction = 0.0

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kaggle_utils import io
from kaggle_utils.data import assemble, folds

out, tables = Path(out_dir), Path(table_dir or out_dir)
data = {"sources": sources} if sources else {"source": source, "csv": labels_csv, "images": images_dir,
                                             "holdout": holdout}
specs = assemble.parse_sources(data)
table = assemble.build_table(specs, tables, n_folds=n_folds, seed=seed, val_fraction=pretrain_val_fraction,
                             workers=workers)
skipped = io.read_csv(tables / assemble.PROBLEMS_FILE)
dropped = io.read_csv(tables / assemble.DROPPED_FILE, text=None)
print(f"{len(table)} labelled images from {len(specs)} source(s); {len(skipped)} row(s) skipped; "
      f"{len(dropped)} external image(s) dropped as duplicates of competition images")
assemble.summary(table, dropped)

# %%
dropped.head(20)

# %%
print(f"{int(table['dup_group'].duplicated(keep=False).sum())} images share a duplicate group")
folds.conflicting_groups(table)

# %%
base = {"size": size, "crop": crop, "circle": circle, "ben_graham": ben_graham, "clahe": clahe, "framing": framing}
manifest = assemble.build_caches(table, specs, out, base, workers=workers)
cached = io.read_csv(out / assemble.TABLE_FILE)
folds.fold_distribution(cached[cached["fold"] >= 0])

# %%
rng = np.random.default_rng(seed)
ok = manifest[manifest["status"] == "ok"]
show = pd.concat([g.iloc[rng.permutation(len(g))[:4]] for _, g in ok.groupby("dataset")])[:12]
fig, axes = plt.subplots(int(np.ceil(len(show) / 4)), 4, figsize=(12, 3 * int(np.ceil(len(show) / 4))),
                         squeeze=False)
for ax in axes.flat:
    ax.axis("off")
for ax, (_, row) in zip(axes.flat, show.iterrows(), strict=False):
    ax.imshow(plt.imread(out / row["cache_path"]))
    ax.set_title(f"{row['dataset']} {row['id'][-12:]} grade {row['grade']}", fontsize=8)
io.write_figure(out / "preprocess_examples.png", fig)
