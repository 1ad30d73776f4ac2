"""What changes with the epoch: the learning-rate schedule (warm-up, cosine/plateau) and weight averaging."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from kaggle_utils.training.config import TrainConfig


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
