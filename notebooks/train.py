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
# # Train one fold
# Fits one fold of one model on a preprocessed cache (see `preprocess`). Rerunning with the same parameters
# resumes from `out_dir/last.pt`; `deadline` (seconds of budget, or an absolute epoch time) stops cleanly with
# a resumable checkpoint. Two stages: `stage="pretrain"` trains on the external sources only (validating on
# their `pretrain_val` share); `stage="finetune"` (default) trains the competition folds, `init_from` the
# stage-1 checkpoint, plus the external rows of `train_sources` in every fold.

# %% tags=["parameters"]
cache_dir = "outputs/cache"
folds_csv = "outputs/cache/folds.csv"
out_dir = "outputs/runs/lite0/fold0"
fold = 0
model = "efficientnet-lite0"
head = "regression"
pool = "avg"
loss = None
pretrained = True
size = 224
epochs = 8
batch_size = 16
lr = 1e-3
augmentation = "seed"
sampler_rates = None
monitor = "val_loss"
patience = None
seed = 0
deadline = None
init_from = None
stage = "finetune"
train_sources = None  # external datasets to train on (pretrain: default all; finetune: default none)
extra_csv = None
num_workers = 2
max_steps_per_epoch = None
overrides = {}  # any other TrainConfig field, e.g. {"warmup_epochs": 1, "schedule": "cosine"}

# %%
import pandas as pd
from IPython.display import Image, display

from kaggle_utils import io
from kaggle_utils.data.assemble import stage_table
from kaggle_utils.training import TrainConfig, load_table, train_fold

fields = {k: v for k, v in dict(globals()).items() if k in TrainConfig.__dataclass_fields__}
cfg = TrainConfig.from_dict({**fields, **overrides})
table = stage_table(load_table(cfg), stage, train_sources)
if extra_csv:  # pseudo-labelled rows: fold -1 trains in every fold, never validates
    extra = io.read_csv(extra_csv)
    table = pd.concat([table, extra.assign(fold=-1)], ignore_index=True)
print(f"{stage}: {len(table)} rows, fold {fold}: {int((table['fold'] == fold).sum())} validation")
table.groupby([table.get("dataset", pd.Series("all", index=table.index)), "fold"]).size().unstack(fill_value=0)

# %%
result = train_fold(cfg, table=table)
result

# %%
display(io.read_csv(f"{out_dir}/metrics.csv"))
display(Image(filename=f"{out_dir}/curves.png"))
