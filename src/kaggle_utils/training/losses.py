"""Training losses by name, checked against the head they train.

========== ================ ===============================================================
name       head             target (models.encode_targets)
========== ================ ===============================================================
mse        regression       float grade (N,)
clipped_mse regression      float grade (N,); no penalty beyond the grade range (see below)
huber      regression       float grade (N,); ``delta`` (default 1.0)
smooth_l1  regression       float grade (N,); ``beta`` (default 1.0)
bce        ordinal          cumulative float targets (N, 4), BCE-with-logits
ce         classification   class index (N,), cross-entropy (``weight``, ``label_smoothing``)
========== ================ ===============================================================
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kaggle_utils.models.heads import HEADS, MAX_GRADE

LOSS_HEADS: dict[str, str] = {
    "mse": "regression",
    "clipped_mse": "regression",
    "huber": "regression",
    "smooth_l1": "regression",
    "bce": "ordinal",
    "ce": "classification",
}
DEFAULT_LOSS = {"regression": "mse", "ordinal": "bce", "classification": "ce"}


def _match(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Regression predictions as (N,) even when a model returns (N, 1): never broadcast (N, 1) vs (N,)."""
    if pred.shape != target.shape and pred.numel() == target.numel():
        pred = pred.reshape(target.shape)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
    return pred


class RegressionLoss(nn.Module):
    """An elementwise regression loss on float grades, robust to (N, 1) predictions."""

    def __init__(self, fn: Any, reduction: str = "mean", **kwargs: float) -> None:
        super().__init__()
        self.fn, self.reduction, self.kwargs = fn, reduction, kwargs

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()  # fp32 even under autocast: soft targets stay exact
        return self.fn(_match(pred, target), target, reduction=self.reduction, **self.kwargs)


class ClippedMSELoss(nn.Module):
    """MSE that does not punish predictions beyond the grade range when the target sits at that end.

    With target 0 and prediction -0.7, or target 4 and prediction 4.6, the error is 0: the prediction
    decodes (clamps / thresholds) to the right grade, and pulling it back only spends capacity.
    Everywhere else it is plain squared error. Formally, error = 0 where (t <= 0 and p < 0) or
    (t >= 4 and p > 4), else (p - t)**2; the mean is over all elements (those zeros included).
    """

    def __init__(self, low: float = 0.0, high: float = float(MAX_GRADE), reduction: str = "mean") -> None:
        super().__init__()
        self.low, self.high, self.reduction = low, high, reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        pred = _match(pred, target)
        free = ((target <= self.low) & (pred < self.low)) | ((target >= self.high) & (pred > self.high))
        return F.mse_loss(torch.where(free, target, pred), target, reduction=self.reduction)


class OrdinalBCELoss(nn.BCEWithLogitsLoss):
    """BCE-with-logits on the (N, 4) cumulative targets [g>0, g>1, g>2, g>3]."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"ordinal logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ; "
                             "encode grades with encode_targets(grades, 'ordinal')")
        return super().forward(logits.float(), target.float())


def default_loss_for(head: str) -> str:
    """The usual loss of a head: regression -> mse, ordinal -> bce, classification -> ce."""
    if head not in DEFAULT_LOSS:
        raise ValueError(f"unknown head {head!r}; choose one of {list(HEADS)}")
    return DEFAULT_LOSS[head]


def check_loss_head(name: str, head: str) -> None:
    """Raise a ValueError naming the compatible losses when ``name`` cannot train ``head``."""
    if name not in LOSS_HEADS:
        raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSS_HEADS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {list(HEADS)}")
    if LOSS_HEADS[name] != head:
        fits = [n for n, h in LOSS_HEADS.items() if h == head]
        raise ValueError(f"loss {name!r} trains a {LOSS_HEADS[name]} head, not a {head} head; "
                         f"for {head} use one of {fits} (default {DEFAULT_LOSS[head]!r})")


def get_loss(name: str, head: str | None = None, **kwargs: Any) -> nn.Module:
    """Loss module by name; pass ``head`` to have the pairing checked. kwargs go to the loss
    (``reduction``; ``delta`` for huber, ``beta`` for smooth_l1, ``pos_weight`` for bce,
    ``weight`` / ``label_smoothing`` for ce)."""
    if head is not None:
        check_loss_head(name, head)
    for key in ("weight", "pos_weight"):  # lists from a JSON/YAML config
        if kwargs.get(key) is not None and not isinstance(kwargs[key], torch.Tensor):
            kwargs[key] = torch.as_tensor(kwargs[key], dtype=torch.float32)
    if name == "mse":
        return RegressionLoss(F.mse_loss, **kwargs)
    if name == "clipped_mse":
        return ClippedMSELoss(**kwargs)
    if name == "huber":
        return RegressionLoss(F.huber_loss, **{"delta": 1.0, **kwargs})
    if name == "smooth_l1":
        return RegressionLoss(F.smooth_l1_loss, **{"beta": 1.0, **kwargs})
    if name == "bce":
        return OrdinalBCELoss(**kwargs)
    if name == "ce":
        return nn.CrossEntropyLoss(**kwargs)
    raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSS_HEADS)}")
