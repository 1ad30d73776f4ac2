"""Checkpoint files, RNG state and model loading.

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
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kaggle_utils import io
from kaggle_utils.training.config import DEFAULT_THRESHOLDS, TrainConfig

CHECKPOINT_FORMAT = "kaggle_utils.train/1"


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


def wants_determinism(cfg: TrainConfig) -> bool:
    """``cfg.deterministic``, where ``auto`` means on CPU (bit-identical resume) and off on CUDA (speed)."""
    if cfg.deterministic != "auto":
        return bool(cfg.deterministic)
    on_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    return not on_cuda


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
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
