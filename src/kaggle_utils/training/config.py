"""The fold's :class:`TrainConfig` and which of its fields must match for a rerun to resume."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_utils import io

DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)


class ConfigMismatchError(ValueError):
    """out_dir holds a run made with different result-changing settings."""


@dataclass
class TrainConfig:
    """Everything that defines a fold's training run; JSON/YAML round-trips via to_dict/from_dict.

    Data: ``cache_dir`` (a :func:`kaggle_utils.data.cache.load_cache` folder) or ``table_csv`` (``id, path, grade``
    [, ``fold``]), or a DataFrame passed to :func:`train_fold`. Folds: ``folds_csv`` (``id, fold``), else a ``fold``
    column in the table, else made with :func:`kaggle_utils.data.folds.make_folds` when ``n_folds`` is set.
    ``deadline``: seconds since the epoch (absolute, e.g. kernel start + 8.5 h) when > 1e9, else a budget in
    seconds counted from the call to train_fold. ``sampler_rates``: None = plain shuffle, e.g. [1, 2, 2, 2, 2] =
    GradeBalancedSampler (``sampler_mode`` "image", "grade" or "source_grade": by camera and grade, see there).
    """

    # The defaults: notebooks/train.py's parameters cell and configs/fold_example.yaml repeat them
    # (tests/test_defaults.py fails when they disagree).
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
    pretrained: bool | str = True  # ImageNet weights found offline (kaggle_utils.models.weights); the notebook's default too
    loss: str | None = None  # kaggle_utils.training.losses name; None: mse / bce / ce by head
    size: int = 224
    # progressive resizing (fast.ai's DAWNBench trick, EfficientNetV2): the training sizes of the first epochs,
    # e.g. [160, 192]; later epochs and every validation run at ``size``
    size_schedule: list[int] | None = None
    # optimisation
    epochs: int = 8
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
    augmentation: str = "seed"  # kaggle_utils.data.augment preset
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
    seed: int = 0
    device: str = "auto"  # auto: cuda (cuda:LOCAL_RANK under torchrun) when available; the chain's slots: cuda:k
    threads: int | None = None  # torch CPU threads (torch.set_num_threads); the chain's CPU slots split the cores
    amp: bool | str = "auto"  # auto: fp16 on CUDA, off on the CPU (true there: bf16; training/precision.py)
    amp_dtype: str = "auto"  # auto: fp16 (+ GradScaler) on a T4, bf16 on GPUs with native bf16 (precision.py)
    channels_last: bool | str = "auto"  # auto: on CUDA and on the CPU
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
         "progress", "overwrite", "in_memory", "val_batch_size", "notes", "device", "threads"}
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
            "sampler_mode": ("image", "grade", "source_grade"),
            "amp_dtype": ("auto", "float16", "bfloat16"),
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
        if self.size_schedule is not None and (
                len(self.size_schedule) >= self.epochs or not all(isinstance(v, int) and v >= 32 for v in self.size_schedule)):
            raise ValueError(f"TrainConfig.size_schedule={self.size_schedule!r}: sizes >= 32 px for fewer epochs than "
                             f"epochs ({self.epochs}), so that the last epochs train at size ({self.size})")
        if self.average_last is not None and not 1 <= self.average_last <= self.epochs:
            raise ValueError(f"TrainConfig.average_last must be in 1..epochs ({self.epochs}), got {self.average_last}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) < 1):
            raise ValueError(f"TrainConfig.threads must be a positive integer or None, got {self.threads!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        return self

    def epoch_size(self, epoch: int) -> int:
        """The training image size of ``epoch`` (0-based)."""
        schedule = self.size_schedule or []
        return int(schedule[epoch]) if epoch < len(schedule) else int(self.size)

    def result_fields(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS}


PATH_FIELDS = ("cache_dir", "table_csv", "folds_csv", "init_from")


def same_place(key: str, saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """A path field that points at the same place relative to out_dir: the workdir was moved or copied (Kaggle
    users copy outputs between kernels), which must not stop a resume."""
    a, b = saved.get(key), now.get(key)
    if key not in PATH_FIELDS or not (a and b and saved.get("out_dir") and now.get("out_dir")):
        return False
    return os.path.relpath(a, saved["out_dir"]) == os.path.relpath(b, now["out_dir"])


def normalised(value: Any) -> Any:
    """JSON round-trip so tuples vs lists and ints vs floats from JSON compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
