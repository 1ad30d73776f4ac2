"""Train one fold: resumable, deadline-aware, single-process or DDP with the same entry point.

``train_fold(cfg)`` writes into ``cfg.out_dir``:

- ``config.json``  the TrainConfig; a rerun with different result-changing settings is refused (ConfigMismatchError)
  unless ``overwrite=True``.
- ``last.pt``      full training state, written at every epoch end, every ``checkpoint_every_steps`` steps /
  ``checkpoint_every_minutes`` inside an epoch, and when the deadline stops the run. Rerunning ``train_fold`` with the
  same config continues from it and, on CPU with the same seed, ends with bit-identical weights to an uninterrupted
  run: the epoch's sample order and each sample's augmentation are functions of ``(seed, epoch, position)``
  (see :mod:`kaggle_utils.data`), batches already trained on are skipped, and the global torch/numpy/python RNG
  states (dropout) are restored at the step boundary.
- ``best.pt``      weights of the best epoch by ``monitor`` + config, metrics and QWK thresholds tuned on the fold.
- ``oof.csv``      ``id, grade, pred, fold`` for the validation fold from the best model (continuous ``pred``).
- ``rows.csv``     ``id, grade[, dataset], split`` (train | val): what this run trained and validated on.
- ``metrics.csv``  one row per epoch: ``epoch, train_loss, val_loss, val_qwk, lr, time``; ``steps.csv`` the
  training loss every ``log_every`` steps; ``curves.png`` loss and QWK per epoch.

Checkpoints are ``torch.save`` dicts (``format: "kaggle_utils.train/1"``, written atomically). last.pt: ``config,
model`` (state dict of the bare model, never the DDP wrapper), ``optimizer, schedule, scaler, sampler`` (with the
position reached in the epoch), ``rng`` (python/numpy/torch/cuda states, one per rank), ``epoch`` (epochs done),
``step`` (batches done in the current epoch), ``global_step, history, step_log, best, bad_epochs, status,
epoch_sums, fingerprint`` (hash of the train/val rows), ``model_meta``. best.pt: ``config, model, epoch, val_loss,
val_qwk, val_qwk_tuned, thresholds, model_meta``. :func:`load_model` rebuilds an eval-mode model from either.

Two-stage training (pre-train on external sources, then fine-tune on the competition data): run ``train_fold`` on
the external table, then a second run with ``init_from=<first out_dir>/best.pt`` (or ``last.pt``). Only model
weights are taken from it (the head too when the head type matches, otherwise the head starts fresh); optimiser,
schedule, sampler and epoch count start anew.

Under ``torchrun`` (env ``WORLD_SIZE`` > 1) the same code initialises the process group (nccl on CUDA, gloo on CPU),
wraps the model in DistributedDataParallel, gives each rank its shard of every epoch, reduces losses and gathers
validation predictions so every rank takes the same early-stopping/deadline decisions, and lets only rank 0 write.

``deadline`` (e.g. kernel start + 8.5 h under Kaggle's 9 h limit) is checked at batch boundaries; once passed, the
run saves a resumable last.pt (best.pt/oof.csv are already on disk from the best epoch so far) and returns with
status "deadline". On CUDA the defaults turn on AMP (fp16 + GradScaler), channels_last and cudnn.benchmark
(``deterministic="auto"``), so a resumed GPU run is close to, not bit-identical with, an uninterrupted one.

    python -m kaggle_utils.train --config fold0.json [--set epochs=5 --set lr=3e-4] [--overwrite]
    torchrun --nproc_per_node 2 -m kaggle_utils.train --config fold0.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from kaggle_utils import io
from kaggle_utils.data import FundusDataset, GradeBalancedSampler, ShuffleSampler

CHECKPOINT_FORMAT = "kaggle_utils.train/1"
DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
ARTIFACTS = ("last.pt", "best.pt", "oof.csv", "metrics.csv", "steps.csv", "curves.png", "config.json", "rows.csv")
_DDP_CHECK_EVERY = 10  # steps between the (synchronising) deadline/checkpoint votes under DDP


class ConfigMismatchError(ValueError):
    """out_dir holds a run made with different result-changing settings."""


@dataclass
class TrainConfig:
    """Everything that defines a fold's training run; JSON/YAML round-trips via to_dict/from_dict.

    Data: ``cache_dir`` (a :func:`kaggle_utils.cache.load_cache` folder) or ``table_csv`` (``id, path, grade``
    [, ``fold``]), or a DataFrame passed to :func:`train_fold`. Folds: ``folds_csv`` (``id, fold``), else a ``fold``
    column in the table, else made with :func:`kaggle_utils.folds.make_folds` when ``n_folds`` is set.
    ``deadline``: seconds since the epoch (absolute, e.g. kernel start + 8.5 h) when > 1e9, else a budget in
    seconds counted from the call to train_fold. ``sampler_rates``: None = plain shuffle, e.g. [1, 2, 2, 2, 2] =
    GradeBalancedSampler (``sampler_mode`` "image" or "grade", see there).
    """

    out_dir: str = "outputs/fold0"
    cache_dir: str | None = None
    table_csv: str | None = None
    folds_csv: str | None = None
    fold: int = 0
    n_folds: int | None = None
    # model
    model: str = "efficientnet-lite0"
    head: str = "regression"
    pool: str = "avg"
    pretrained: bool | str = True  # ImageNet weights found offline (kaggle_utils.weights); the notebook's default too
    loss: str | None = None  # kaggle_utils.losses name; None: mse / bce / ce by head
    size: int = 224
    # optimisation
    epochs: int = 10
    batch_size: int = 16
    val_batch_size: int | None = None
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | plateau | constant
    min_lr: float = 1e-6
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    grad_clip: float | None = None
    # data pipeline
    augmentation: str = "seed"  # kaggle_utils.augment preset
    sampler_rates: list[float] | None = None
    sampler_mode: str = "image"
    source_weights: dict[str, float] | None = None  # per ``dataset`` (multi-source tables): relative draw weight
    samples_per_epoch: int | None = None
    in_memory: bool = False
    num_workers: int = 2
    # early stopping, weight averaging
    monitor: str = "val_loss"  # val_loss | val_qwk
    patience: int | None = None
    average_last: int | None = None  # average the weights of the last K epochs into best.pt (2nd place)
    # runtime
    seed: int = 42
    device: str = "auto"
    amp: bool | str = "auto"  # auto: on CUDA only
    amp_dtype: str = "float16"
    channels_last: bool | str = "auto"  # auto: on CUDA only
    deterministic: bool | str = "auto"  # auto: on CPU (bit-exact resume); CUDA gets cudnn.benchmark speed
    init_from: str | None = None
    deadline: float | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 20.0
    max_steps_per_epoch: int | None = None
    log_every: int = 50
    progress: bool = True
    overwrite: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    # Settings that may differ when resuming: they do not change the numbers a run produces.
    RUNTIME_FIELDS = frozenset(
        {"out_dir", "num_workers", "deadline", "checkpoint_every_steps", "checkpoint_every_minutes", "log_every",
         "progress", "overwrite", "in_memory", "val_batch_size", "notes", "device"}
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return io.dataclass_from_dict(cls, d, noun="field(s)")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """A fold's settings from YAML or JSON (``configs/fold_example.yaml`` lists the usual ones); every error
        is a ValueError/FileNotFoundError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found (see configs/fold_example.yaml)")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
            raise ValueError(f"{path}: cannot parse ({str(err).splitlines()[0]})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err

    def to_json(self, path: str | os.PathLike) -> Path:
        return io.write_json(path, self.to_dict())

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> TrainConfig:
        choices = {
            "head": ("regression", "ordinal", "classification"),
            "optimizer": ("adam", "adamw"),
            "schedule": ("cosine", "plateau", "constant"),
            "monitor": ("val_loss", "val_qwk"),
            "sampler_mode": ("image", "grade"),
            "amp_dtype": ("float16", "bfloat16"),
        }
        for name in ("amp", "channels_last", "deterministic"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; expected true, false or 'auto'")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        for name in ("epochs", "batch_size", "size", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.average_last is not None and not 1 <= self.average_last <= self.epochs:
            raise ValueError(f"TrainConfig.average_last must be in 1..epochs ({self.epochs}), got {self.average_last}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        return self

    def result_fields(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS}


# --------------------------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False  # we called init_process_group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group when launched by it (nccl on CUDA, gloo on CPU)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, created=True)


def _all_gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------ helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """torch.save through io.atomic_write: a kill mid-save leaves the previous checkpoint intact."""
    with io.atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated/corrupt files surface as many exception types
        raise ValueError(f"cannot load checkpoint {path}: {err}; delete it to start over") from err
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError(f"{path} is not a kaggle_utils checkpoint (no 'model' entry)")
    return ck


def load_model(source: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a best.pt/last.pt in eval mode; ``.thresholds`` is set when the file has them.

    ``source`` is the file or a checkpoint already read with :func:`load_checkpoint` (read each file once).
    """
    from kaggle_utils.models import create_model

    ck = source if isinstance(source, dict) else load_checkpoint(source)
    cfg = ck["config"]
    model = create_model(cfg["model"], head=cfg["head"], pool=cfg["pool"], pretrained=False)
    model.load_state_dict(ck["model"])
    model.thresholds = ck.get("thresholds", list(DEFAULT_THRESHOLDS))
    return model.to(device).eval()


def _now() -> float:
    """Wall clock for deadlines and timed checkpoints (one place to fake it in tests)."""
    return time.time()


def _parse_deadline(deadline: float | None, started: float) -> float | None:
    if deadline is None:
        return None
    deadline = float(deadline)
    return deadline if deadline > 1e9 else started + deadline


def _match_shape(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, 1) regression outputs against (B,) targets would broadcast to (B, B) silently."""
    if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1 and targets.is_floating_point():
        return outputs.squeeze(-1)
    return outputs


def _fingerprint(*tables: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for t in tables:
        h.update(pd.util.hash_pandas_object(t[["id", "grade"]].astype(str), index=False).values.tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


class LRSchedule:
    """Linear warm-up per step, then cosine to ``min_lr`` per step, or plateau factor per epoch.

    One small object instead of chained torch schedulers so its whole state is three numbers in the checkpoint.
    """

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        self.base_lr, self.min_lr = float(cfg.lr), float(cfg.min_lr)
        self.kind = cfg.schedule
        self.total = max(1, cfg.epochs * steps_per_epoch)
        self.warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.factor, self.patience = cfg.plateau_factor, cfg.plateau_patience
        self.higher_better = cfg.monitor == "val_qwk"
        self.scale, self.best, self.bad = 1.0, None, 0

    def lr(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        if self.kind == "cosine":
            t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        return max(self.min_lr, self.base_lr * self.scale)

    def epoch_end(self, metric: float) -> None:
        if self.kind != "plateau" or metric is None or math.isnan(metric):
            return
        better = self.best is None or (metric > self.best if self.higher_better else metric < self.best)
        if better:
            self.best, self.bad = metric, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.scale, self.bad = self.scale * self.factor, 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]


# --------------------------------------------------------------------------------------------------- data


def load_table(cfg: TrainConfig, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The labelled table with ``id, grade, fold`` and an image path column.

    A ``table`` passed in that already has a ``fold`` column is taken as is (e.g. load_table's output plus extra
    rows with fold -1, which train in every fold and never validate); otherwise folds come from ``folds_csv``.
    """
    given_folds = table is not None and "fold" in table.columns
    if table is None:
        if cfg.cache_dir:
            from kaggle_utils.cache import load_cache

            table = load_cache(cfg.cache_dir)
        elif cfg.table_csv:
            if not Path(cfg.table_csv).is_file():
                raise FileNotFoundError(f"table_csv {cfg.table_csv} not found")
            table = pd.read_csv(cfg.table_csv, dtype={"id": str})
            missing = [c for c in ("id", "path", "grade") if c not in table.columns]
            if missing:
                hint = (" (an APTOS train.csv: run `python -m kaggle_utils.preprocess --source aptos --csv train.csv "
                        "--images train_images --out CACHE --folds 5` and set cache_dir/folds_csv instead)"
                        if {"id_code", "diagnosis"} <= set(table.columns) else "")
                raise ValueError(f"table_csv {cfg.table_csv} lacks column(s) {missing}; needs id, path, grade"
                                 f"[, fold]{hint}")
            root = Path(cfg.table_csv).resolve().parent
            table["path"] = [str(p if Path(p).is_absolute() else root / p) for p in table["path"]]
        else:
            raise ValueError("no data: set TrainConfig.cache_dir or table_csv, or pass table= to train_fold")
    table = table.copy()
    missing = [c for c in ("id", "grade") if c not in table.columns]
    if missing:
        raise KeyError(f"training table lacks column(s) {missing}; columns: {list(table.columns)}")
    table["id"] = table["id"].astype(str)
    if cfg.folds_csv and not given_folds:
        from kaggle_utils.folds import read_folds

        folds = read_folds(cfg.folds_csv)[["id", "fold"]]
        table = table.drop(columns=["fold"], errors="ignore").merge(folds, on="id", how="left")
        if table["fold"].isna().any():
            ids = table.loc[table["fold"].isna(), "id"].head(5).tolist()
            raise ValueError(f"{cfg.folds_csv} has no fold for ids {ids}...; rebuild the folds file")
    elif "fold" not in table.columns:
        if not cfg.n_folds:
            raise ValueError("table has no 'fold' column: set TrainConfig.folds_csv or n_folds")
        from kaggle_utils.folds import GROUP_COLUMN, make_folds

        group = GROUP_COLUMN if GROUP_COLUMN in table.columns else None  # duplicate groups when known
        table = make_folds(table, n_folds=cfg.n_folds, seed=cfg.seed, group_col=group)
    table = table[pd.to_numeric(table["grade"], errors="coerce").notna()].reset_index(drop=True)
    table["fold"] = table["fold"].astype(int)
    return table


def split_fold(table: pd.DataFrame, fold: int, allow_no_val: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) rows; ``allow_no_val``: a run with no validation (pre-training on all external rows)
    keeps its last epoch as best."""
    val = table[table["fold"] == fold].reset_index(drop=True)
    train = table[table["fold"] != fold].reset_index(drop=True)
    if train.empty or (val.empty and not allow_no_val):
        raise ValueError(f"fold {fold} leaves {len(train)} train / {len(val)} validation rows; folds present: "
                         f"{sorted(table['fold'].unique().tolist())}")
    return train, val


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(0)  # workers already parallelise; OpenCV's own pool would oversubscribe the cores


# -------------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig) -> nn.Module:
    from kaggle_utils.models import create_model

    return create_model(cfg.model, head=cfg.head, pool=cfg.pool, pretrained=cfg.pretrained)


def init_weights_from(model: nn.Module, path: str | os.PathLike, cfg: TrainConfig) -> dict[str, list[str]]:
    """Two-stage training: copy matching weights from a checkpoint (head only when the head type matches)."""
    ck = load_checkpoint(path)
    src_cfg = ck.get("config", {})
    if src_cfg.get("model", cfg.model) != cfg.model:
        raise ValueError(f"init_from {path} holds a {src_cfg.get('model')!r} model, this run trains {cfg.model!r}")
    same_head = src_cfg.get("head", cfg.head) == cfg.head
    own = model.state_dict()
    head_prefixes = _head_prefixes(model)
    loaded, skipped = [], []
    new_state = {}
    for k, v in ck["model"].items():
        is_head = any(k.startswith(p) for p in head_prefixes)
        if k in own and own[k].shape == v.shape and (same_head or not is_head):
            new_state[k] = v
            loaded.append(k)
        else:
            skipped.append(k)
    if not loaded:
        raise ValueError(f"init_from {path}: no parameter matched this model; wrong file?")
    model.load_state_dict(new_state, strict=False)
    return {"loaded": loaded, "skipped": skipped}


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Names of the head's parameters: the model says (``head_module``) or it is the last child module."""
    name = getattr(model, "head_module_name", None)
    if isinstance(name, str):
        return (name + ".",)
    children = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    return (children[-1] + ".",) if children else ()


# ------------------------------------------------------------------------------------------------ trainer


class Trainer:
    """One fold's training run; :func:`train_fold` is ``Trainer(cfg, table).fit()``.

    Split out so benchmarks and notebooks can drive ``train_epoch`` / ``validate`` directly.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        table: pd.DataFrame | None = None,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        dist_info: DistInfo | None = None,
    ):
        self.cfg = cfg.validate()
        self.started = _now()
        self.deadline = _parse_deadline(cfg.deadline, self.started)
        self.dist = dist_info or DistInfo()
        self.on_step = on_step
        self.out = Path(cfg.out_dir)
        self.device = self._pick_device()
        cuda = self.device.type == "cuda"
        self.amp = cuda if cfg.amp == "auto" else bool(cfg.amp)
        self.amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        self.channels_last = cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)

        table = load_table(cfg, table)
        self.train_table, self.val_table = split_fold(table, cfg.fold, allow_no_val=True)
        if self.val_table.empty:
            _say(f"fold {cfg.fold} has no validation rows: every epoch replaces best.pt, no OOF is written")
        self.fingerprint = _fingerprint(self.train_table, self.val_table)

        seed_everything(cfg.seed)
        self.net = build_model(cfg)
        self.init_report: dict[str, list[str]] | None = None  # filled by fit() from cfg.init_from
        self.net.to(self.device)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.net
        if self.dist.enabled:
            ids = [self.device.index] if cuda else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        # The training stream (dropout): per rank, after init so the weights do not depend on the rank.
        seed_everything(cfg.seed * 1000 + self.dist.rank + 1)

        self._build_data()
        self.loss_fn = self._build_loss()
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = LRSchedule(cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)

        self.epoch, self.step, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.step_log: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.bad_epochs = 0
        self.status = "running"
        self.epoch_loss_sum, self.epoch_count, self.epoch_time = 0.0, 0, 0.0
        self._last_ckpt_time = _now()
        self._tables_at = -1
        self.averager = WeightAverager(cfg.average_last, cfg.epochs) if cfg.average_last else None

    # ---- setup
    def _pick_device(self) -> torch.device:
        if self.cfg.device != "auto":
            device = torch.device(self.cfg.device)
            return torch.device("cuda", self.dist.local_rank) if device.type == "cuda" and device.index is None \
                else device
        if torch.cuda.is_available():
            return torch.device("cuda", self.dist.local_rank)
        return torch.device("cpu")

    def _build_loss(self) -> Callable[..., torch.Tensor]:
        from kaggle_utils.losses import default_loss_for, get_loss

        return get_loss(self.cfg.loss or default_loss_for(self.cfg.head), head=self.cfg.head)

    def _build_data(self) -> None:
        cfg = self.cfg
        from kaggle_utils.augment import get_augmentation

        mean = getattr(self.net, "mean", None) or (0.485, 0.456, 0.406)
        std = getattr(self.net, "std", None) or (0.229, 0.224, 0.225)
        common = {"mean": mean, "std": std, "head": cfg.head, "size": cfg.size, "in_memory": cfg.in_memory,
                  "seed": cfg.seed, "progress": cfg.progress and self.dist.is_main}
        transform = None if cfg.augmentation in (None, "none") else get_augmentation(cfg.augmentation, cfg.size)
        self.train_ds = FundusDataset(self.train_table, transform=transform, **common)
        self.val_ds = FundusDataset(self.val_table, transform=None, **common)
        rank, world = self.dist.rank, self.dist.world_size
        if cfg.sampler_rates or cfg.source_weights:
            self.sampler = GradeBalancedSampler(
                self.train_ds.grades, cfg.sampler_rates or [1.0] * 5, cfg.samples_per_epoch, cfg.seed, rank, world,
                mode=cfg.sampler_mode, yield_seeds=True, row_weights=self._row_weights())
        else:
            self.sampler = ShuffleSampler(len(self.train_ds), cfg.seed, rank, world, yield_seeds=True,
                                          num_samples=cfg.samples_per_epoch)
        bs = cfg.batch_size
        self.drop_last = self.sampler.shard_size >= bs
        steps = self.sampler.shard_size // bs if self.drop_last else 1
        self.steps_per_epoch = min(steps, cfg.max_steps_per_epoch or steps)
        cuda = self.device.type == "cuda"
        workers = cfg.num_workers
        loader_kw = {"num_workers": workers, "pin_memory": cuda, "worker_init_fn": _worker_init if workers else None,
                     "persistent_workers": workers > 0}
        # A private generator: DataLoader otherwise draws its worker base seed from the global torch RNG on
        # every iter(), which would shift the dropout stream of a resumed run.
        self.train_loader = DataLoader(self.train_ds, batch_size=bs, sampler=self.sampler, drop_last=self.drop_last,
                                       generator=torch.Generator().manual_seed(cfg.seed), **loader_kw)
        val_idx = list(range(rank, len(self.val_ds), world))
        self.val_loader = DataLoader(Subset(self.val_ds, val_idx), batch_size=cfg.val_batch_size or 2 * bs,
                                     shuffle=False, generator=torch.Generator().manual_seed(cfg.seed), **loader_kw)
        self.val_idx = val_idx

    def _row_weights(self) -> np.ndarray | None:
        weights = self.cfg.source_weights
        if not weights:
            return None
        if "dataset" not in self.train_table.columns:
            raise ValueError("source_weights needs a 'dataset' column (a multi-source table, see kaggle_utils.assemble)")
        unknown = sorted(set(weights) - set(self.train_table["dataset"]))
        if unknown:
            raise ValueError(f"source_weights names dataset(s) {unknown} that have no training rows; "
                             f"datasets here: {sorted(set(self.train_table['dataset']))}")
        return self.train_table["dataset"].map(weights).fillna(1.0).to_numpy(np.float64)

    # ---- resume / compatibility
    def prepare_out_dir(self) -> bool:
        """Check out_dir against this config; returns True when there is a last.pt to resume from."""
        last = self.out / "last.pt"
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            io.sweep_temp_files(self.out)
            if self.cfg.overwrite:
                for name in ARTIFACTS:
                    with contextlib.suppress(FileNotFoundError):
                        (self.out / name).unlink()
        self._barrier()
        if not last.exists():
            if self.dist.is_main:
                self.cfg.to_json(self.out / "config.json")
                self._write_rows()
            self._barrier()
            return False
        saved_path = self.out / "config.json"
        saved = io.read_json(saved_path) if saved_path.exists() else load_checkpoint(last)["config"]
        mine = self.cfg.result_fields()
        diffs = {k: (saved.get(k), v) for k, v in mine.items() if _norm(saved.get(k)) != _norm(v)
                 and not _same_place(k, saved, self.cfg.to_dict())}
        if diffs:
            lines = "; ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diffs.items()))
            raise ConfigMismatchError(
                f"{self.out} holds a run with different settings ({lines}). Use the same config to resume, "
                "a new out_dir, or overwrite=True (--overwrite) to start over."
            )
        return True

    def resume(self) -> None:
        ck = load_checkpoint(self.out / "last.pt")  # on CPU: RNG states must stay CPU tensors
        if ck.get("fingerprint") != self.fingerprint:
            raise ConfigMismatchError(
                f"{self.out / 'last.pt'} was trained on different rows (ids/grades/folds changed); "
                "use overwrite=True to start over"
            )
        self.net.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.schedule.load_state_dict(ck["schedule"])
        self.scaler.load_state_dict(ck["scaler"])
        self.sampler.load_state_dict(ck["sampler"])
        self.epoch, self.step, self.global_step = ck["epoch"], ck["step"], ck["global_step"]
        self.history, self.step_log = ck["history"], ck["step_log"]
        self.best, self.bad_epochs, self.status = ck["best"], ck["bad_epochs"], ck["status"]
        self.epoch_loss_sum, self.epoch_count, self.epoch_time = ck["epoch_sums"]
        if self.averager is not None:
            self.averager.load_state_dict(ck.get("averager"))
        rngs = ck["rng"]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:  # different process count: order is lost anyway (the sampler refused mid-epoch states)
            seed_everything(self.cfg.seed * 1000 + self.global_step + self.dist.rank)

    # ---- checkpoints and artifacts
    def checkpoint_state(self) -> dict[str, Any]:
        rngs = _all_gather(rng_state(), self.dist)  # collective: every rank calls this
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(position=self.step * self.cfg.batch_size),
            "rng": rngs,
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "history": self.history,
            "step_log": self.step_log,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "status": self.status,
            "epoch_sums": (self.epoch_loss_sum, self.epoch_count, self.epoch_time),
            "fingerprint": self.fingerprint,
            "model_meta": self._model_meta(),
            "averager": self.averager.state_dict() if self.averager is not None else None,
            "saved_at": time.time(),
        }

    def save_last(self) -> None:
        self._sync_buffers()
        state = self.checkpoint_state()
        if self.dist.is_main:
            save_checkpoint(self.out / "last.pt", state)
            self._write_tables()
        self._last_ckpt_time = _now()

    def _write_rows(self) -> None:
        """``rows.csv``: which ids trained and which validated (audits: e.g. stage 1 saw no validation image)."""
        cols = [c for c in ("id", "grade", "dataset") if c in self.train_table.columns]
        rows = pd.concat([self.train_table[cols].assign(split="train"), self.val_table[cols].assign(split="val")])
        io.write_csv(self.out / "rows.csv", rows)

    def _model_meta(self) -> dict[str, Any]:
        return {k: getattr(self.net, k, None) for k in ("name", "head", "pool")} | {
            "mean": list(getattr(self.net, "mean", None) or []), "std": list(getattr(self.net, "std", None) or [])}

    def _preprocess_recipe(self) -> dict[str, Any] | None:
        """The cache's preprocessing, kept in best.pt so inference needs only the checkpoint (Kaggle)."""
        recipe = Path(self.cfg.cache_dir or "") / "preprocess.json"
        return io.read_json(recipe) if self.cfg.cache_dir and recipe.is_file() else None

    def _write_tables(self) -> None:
        if self.history and self._tables_at != len(self.history):  # epoch tables change at epoch ends only
            io.write_csv(self.out / "metrics.csv", pd.DataFrame(self.history))
            write_curves(self.out / "curves.png", self.history)
            self._tables_at = len(self.history)
        if self.step_log:
            io.write_csv(self.out / "steps.csv", pd.DataFrame(self.step_log))

    def save_best(self, row: dict[str, Any], preds: np.ndarray) -> None:
        from kaggle_utils.metrics import optimise_thresholds, qwk

        if not self.dist.is_main:
            return
        grades = np.rint(self.val_ds.grades).astype(int)
        try:
            thresholds = [float(t) for t in optimise_thresholds(preds, grades)]
        except Exception:  # tiny folds can defeat the optimiser; defaults are still a usable answer
            thresholds = list(DEFAULT_THRESHOLDS)
        from kaggle_utils.metrics import apply_thresholds

        tuned = float(qwk(grades, apply_thresholds(preds, thresholds))) if len(preds) else float("nan")
        save_checkpoint(self.out / "best.pt", {
            "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "model": self.net.state_dict(),
            "epoch": row["epoch"], "val_loss": row["val_loss"], "val_qwk": row["val_qwk"],
            "val_qwk_tuned": tuned, "thresholds": thresholds, "model_meta": self._model_meta(),
            "preprocess": self._preprocess_recipe(), "averaged_epochs": row.get("averaged_epochs"),
        })
        oof = pd.DataFrame({"id": self.val_table["id"], "grade": grades, "pred": preds, "fold": self.cfg.fold})
        io.write_csv(self.out / "oof.csv", oof)

    def _sync_buffers(self) -> None:
        """BatchNorm running stats drift per rank under DDP; rank 0's are the ones kept."""
        if self.dist.enabled:
            for buf in self.net.buffers():
                dist.broadcast(buf, 0)

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    # ---- the loop
    def fit(self) -> dict[str, Any]:
        resumed = self.prepare_out_dir()
        if resumed:
            self.resume()
        elif self.cfg.init_from:  # a resumed run has its own weights; the init file may be gone by now
            self.init_report = init_weights_from(self.net, self.cfg.init_from, self.cfg)
        if self.status in ("completed", "early_stopped"):
            return self.result(resumed)
        self.status = "running"
        while self.epoch < self.cfg.epochs:
            if not self.train_epoch():
                self.status = "deadline"
                self.save_last()
                return self.result(resumed)
            row, preds = self.validate()
            if self.end_epoch(row, preds):  # saves last.pt, with the final status after the last epoch
                break
        if self.status == "running":  # epochs already done when resumed (e.g. epochs lowered): finish cleanly
            self.status = "completed"
            self.save_last()
        return self.result(resumed)

    def _vote(self, force: bool = False) -> tuple[bool, bool]:
        """(deadline passed, time-based checkpoint due), identical on every rank."""
        now = _now()
        flags = [self.deadline is not None and now >= self.deadline,
                 bool(self.cfg.checkpoint_every_minutes)
                 and now - self._last_ckpt_time >= 60.0 * self.cfg.checkpoint_every_minutes]
        if not self.dist.enabled:
            return flags[0], flags[1]
        if not force and self.step % _DDP_CHECK_EVERY:
            return False, False
        t = torch.tensor([int(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0]), bool(t[1])

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when the deadline stopped it (state saved by caller)."""
        cfg = self.cfg
        self.model.train()
        self.sampler.set_epoch(self.epoch, start=min(self.step * cfg.batch_size, self.sampler.shard_size))
        t0 = time.time() - self.epoch_time
        loss_sum = torch.zeros((), device=self.device)
        log_sum, log_n = torch.zeros((), device=self.device), 0
        bar = self._bar()
        batches = iter(self.train_loader)
        try:
            while self.step < self.steps_per_epoch:
                deadline, ckpt_due = self._vote()
                if deadline:
                    self._fold_sums(loss_sum, t0)
                    return False
                if ckpt_due:
                    self._fold_sums(loss_sum, t0)
                    loss_sum.zero_()
                    self.save_last()
                x, y = next(batches)
                loss = self.train_step(x, y)
                loss_sum += loss * x.shape[0]
                log_sum += loss
                log_n += 1
                self.step += 1
                self.global_step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.steps_per_epoch:
                    self._log_step(log_sum / log_n, bar)
                    log_sum.zero_()
                    log_n = 0
                if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0 \
                        and self.step < self.steps_per_epoch:
                    self._fold_sums(loss_sum, t0)
                    loss_sum.zero_()
                    self.save_last()
                if self.on_step is not None:
                    self.on_step({"epoch": self.epoch, "step": self.step, "global_step": self.global_step,
                                  "trainer": self})
        finally:
            if bar is not None:
                bar.close()
        self._fold_sums(loss_sum, t0)
        return not self._vote(force=True)[0]

    def _fold_sums(self, loss_sum: torch.Tensor, t0: float) -> None:
        """Move the device-side loss sum into the checkpointable counters (one sync)."""
        done = self.step * self.cfg.batch_size
        self.epoch_loss_sum += float(loss_sum)
        self.epoch_count = done
        self.epoch_time = time.time() - t0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns the detached loss without synchronising the device."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = self.schedule.lr(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.model(x)
            loss = self.loss_fn(_match_shape(out, y).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def _bar(self) -> Any:
        if not (self.cfg.progress and self.dist.is_main):
            return None
        from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

        return tqdm(total=self.steps_per_epoch, initial=self.step, leave=False, dynamic_ncols=True,
                    desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}")

    def _log_step(self, mean_loss: torch.Tensor, bar: Any) -> None:
        value = float(mean_loss)  # the only per-interval sync
        self.step_log.append({"global_step": self.global_step, "epoch": self.epoch + 1, "step": self.step,
                              "loss": value, "lr": self.optimizer.param_groups[0]["lr"]})
        if bar is not None:
            bar.set_postfix(loss=f"{value:.4f}")

    @torch.no_grad()
    def predict_val(self) -> tuple[np.ndarray, float]:
        """Continuous predictions for the whole validation fold and its mean loss (gathered over ranks)."""
        self._sync_buffers()
        self.net.eval()
        preds, loss_sum = [], 0.0
        for x, y in self.val_loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                out = self.net(x)
            out = out.float()
            loss_sum += float(self.loss_fn(_match_shape(out, y), y)) * x.shape[0]
            preds.append(self.net.decode(out).float().reshape(-1).cpu())
        local = np.concatenate([p.numpy() for p in preds]) if preds else np.zeros(0, np.float32)
        parts = _all_gather((self.val_idx, local, loss_sum), self.dist)
        full = np.zeros(len(self.val_ds), dtype=np.float64)
        for idx, p, _ in parts:
            full[idx] = p
        return full, sum(part[2] for part in parts) / len(self.val_ds) if len(self.val_ds) else float("nan")

    def validate(self) -> tuple[dict[str, Any], np.ndarray]:
        from kaggle_utils.metrics import apply_thresholds, qwk

        t0 = time.time()
        preds, val_loss = self.predict_val()
        grades = np.rint(self.val_ds.grades).astype(int)
        val_qwk = float(qwk(grades, apply_thresholds(preds, DEFAULT_THRESHOLDS))) if len(preds) else float("nan")
        sums = torch.tensor([self.epoch_loss_sum, float(self.epoch_count)], dtype=torch.float64)
        if self.dist.enabled:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
        row = {"epoch": self.epoch + 1, "train_loss": float(sums[0] / max(1.0, float(sums[1]))),
               "val_loss": float(val_loss), "val_qwk": val_qwk, "lr": self.optimizer.param_groups[0]["lr"],
               "time": self.epoch_time + time.time() - t0}
        return row, preds

    def end_epoch(self, row: dict[str, Any], preds: np.ndarray) -> bool:
        """Record the epoch, keep the best model, step the plateau schedule; True = stop early."""
        self.history.append(row)
        value = row[self.cfg.monitor]
        higher = self.cfg.monitor == "val_qwk"
        improved = self.best is None or (value > self.best["value"] if higher else value < self.best["value"])
        improved = improved or not len(self.val_ds)  # nothing to compare: the latest epoch is the result
        if self.averager is not None:
            self.averager.update(self.net, row["epoch"])
        if improved:
            self.best = {"value": value, "epoch": row["epoch"], "val_loss": row["val_loss"], "val_qwk": row["val_qwk"]}
            self.bad_epochs = 0
            self.save_best(row, preds)
        else:
            self.bad_epochs += 1
        self.schedule.epoch_end(value)
        if self.dist.is_main:
            _say(f"epoch {row['epoch']}/{self.cfg.epochs} train_loss {row['train_loss']:.4f} val_loss "
                 f"{row['val_loss']:.4f} val_qwk {row['val_qwk']:.4f} lr {row['lr']:.2e} {row['time']:.0f}s"
                 + (" *" if improved else ""))
        self.epoch += 1
        self.step = 0
        self.epoch_loss_sum, self.epoch_count, self.epoch_time = 0.0, 0, 0.0
        stop = self.cfg.patience is not None and self.bad_epochs > self.cfg.patience
        if stop:
            self.status = "early_stopped"
        elif self.epoch >= self.cfg.epochs:
            self.status = "completed"
        if self.status != "running" and self.averager is not None:
            self.finish_average()
        self.save_last()
        return stop

    def finish_average(self) -> None:
        """Replace best.pt by the average of the last epochs' weights (validated like an epoch); last.pt keeps
        the final weights so a resumed run is unchanged."""
        if not self.averager.count:
            _say("average_last: no epoch of the averaging window was reached; best.pt is the best epoch")
            return
        final = {k: v.clone() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(self.averager.averaged(final))
        row, preds = self.validate()
        row = {**row, "epoch": self.history[-1]["epoch"], "averaged_epochs": self.averager.epochs}
        self.best = {"value": row[self.cfg.monitor], "epoch": row["epoch"], "val_loss": row["val_loss"],
                     "val_qwk": row["val_qwk"], "averaged_epochs": self.averager.epochs}
        self.save_best(row, preds)
        _say(f"averaged epochs {self.averager.epochs}: val_loss {row['val_loss']:.4f} val_qwk {row['val_qwk']:.4f}")
        self.net.load_state_dict(final)

    def result(self, resumed: bool) -> dict[str, Any]:
        out = self.out
        best = self.best or {}
        return {
            "status": self.status,
            "resumed": bool(resumed),
            "epochs_done": self.epoch,
            "global_step": self.global_step,
            "best_epoch": best.get("epoch"),
            "best_val_loss": best.get("val_loss"),
            "best_val_qwk": best.get("val_qwk"),
            "averaged_epochs": best.get("averaged_epochs"),
            "monitor": self.cfg.monitor,
            "out_dir": str(out),
            "last": str(out / "last.pt"),
            "best": str(out / "best.pt") if (out / "best.pt").exists() else None,
            "oof": str(out / "oof.csv") if best else None,
            "metrics": str(out / "metrics.csv") if self.history else None,
            "curves": str(out / "curves.png") if self.history else None,
            "config": str(out / "config.json"),
        }


class WeightAverager:
    """Running mean of the weights at the ends of the last ``k`` of ``epochs`` epochs (the 2nd place's
    averaging of the last epochs). Float tensors are averaged (BatchNorm statistics too, close enough for
    neighbouring epochs of a decayed schedule); integer buffers keep the final value."""

    def __init__(self, k: int, epochs: int):
        self.first = epochs - k + 1
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.epochs: list[int] = []

    def update(self, net: nn.Module, epoch: int) -> None:
        if epoch < self.first or epoch in self.epochs:
            return
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                v = v.detach().to("cpu", torch.float64)
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1
        self.epochs.append(int(epoch))

    def averaged(self, current: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (self.sums[k] / self.count).to(v.dtype).to(v.device) if k in self.sums else v
                for k, v in current.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums, "count": self.count, "epochs": self.epochs, "first": self.first}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.sums, self.count, self.epochs = state["sums"], state["count"], list(state["epochs"])


PATH_FIELDS = ("cache_dir", "table_csv", "folds_csv", "init_from")


def _same_place(key: str, saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """A path field that points at the same place relative to out_dir: the workdir was moved or copied (Kaggle
    users copy outputs between kernels), which must not stop a resume."""
    a, b = saved.get(key), now.get(key)
    if key not in PATH_FIELDS or not (a and b and saved.get("out_dir") and now.get("out_dir")):
        return False
    return os.path.relpath(a, saved["out_dir"]) == os.path.relpath(b, now["out_dir"])


def _norm(value: Any) -> Any:
    """JSON round-trip so tuples vs lists and ints vs floats from JSON compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _say(msg: str) -> None:
    from tqdm.std import tqdm  # not tqdm.auto: "IProgress not found" in kernels

    tqdm.write(msg, file=sys.stderr)


def write_curves(path: str | os.PathLike, history: list[dict[str, Any]]) -> Path:
    """Loss and QWK per epoch. matplotlib's Figure directly: no pyplot state, works headless."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    h = pd.DataFrame(history)
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(h["epoch"], h["train_loss"], "o-", label="train")
    ax1.plot(h["epoch"], h["val_loss"], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(h["epoch"], h["val_qwk"], "o-", color="tab:green")
    ax2.set(xlabel="epoch", ylabel="QWK", title="validation QWK (thresholds 0.5 .. 3.5)")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return io.write_figure(path, fig)


def _wants_determinism(cfg: TrainConfig) -> bool:
    if cfg.deterministic != "auto":
        return bool(cfg.deterministic)
    on_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    return not on_cuda


@contextlib.contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the run, restored afterwards.

    Cheap: the torch._dynamo import it triggers in torch 2.14 happens anyway when the optimiser is built, and
    the NaN-filling of fresh allocations that comes with it (a debugging aid, a memset per tensor) is turned off.
    """
    det = torch.utils.deterministic
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    det.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]
        det.fill_uninitialized_memory = prev[3]


def train_fold(
    cfg: TrainConfig | dict[str, Any],
    table: pd.DataFrame | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or return the finished result of) one fold; see the module docstring.

    ``table``: the labelled rows (``id, grade``, a path column, optionally ``fold``) instead of cfg's files.
    ``on_step``: called after every optimiser step (and any checkpoint it triggered) with
    ``{epoch, step, global_step, trainer}`` (progress hooks, tests).
    Returns ``status`` ("completed" | "early_stopped" | "deadline"), best epoch/metrics and artifact paths.
    """
    cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
    info = init_distributed()
    try:
        with _determinism(_wants_determinism(cfg)):
            return Trainer(cfg, table, on_step, info).fit()
    finally:
        if info.created:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one fold (works under torchrun too).")
    parser.add_argument("--config", required=True, help="TrainConfig as .json or .yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field; VALUE parsed as JSON when possible (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing run in out_dir")
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig.from_file(args.config)
        changes = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            try:
                changes[key] = json.loads(value)
            except json.JSONDecodeError:
                changes[key] = value
        if args.overwrite:
            changes["overwrite"] = True
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **changes}).validate()
        result = train_fold(cfg)
    except (OSError, KeyError, ValueError) as err:  # config, data and settings-mismatch errors: one line
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {str(msg).splitlines()[0]}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
