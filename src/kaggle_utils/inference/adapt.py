"""Label-free test-time adaptation: BatchNorm statistics re-estimated on the test images (AdaBN, Li et al. 2016).

A model trained on one camera normalises every layer with that camera's feature statistics; photographs from
another camera shift them, and the grades drift with them. Re-estimating each BatchNorm layer's running mean
and variance on the test set itself needs no labels. ``mix`` blends the two: ``(1 - mix) * training + mix *
test`` (1.0 = the full swap of AdaBN, 0.0 = off), since a small or one-sided test set can pull the statistics
too far. The pass runs the test images in their given order, without augmentation, so it is deterministic;
the models passed in are left unchanged (adapted copies are returned).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def check_mix(mix: float) -> float:
    mix = float(mix)
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"adapt_bn must be between 0 (off) and 1 (test statistics only), got {mix}")
    return mix


@torch.no_grad()
def adapt_batchnorm(models: Sequence[nn.Module], batches: Iterable[torch.Tensor], mean: Sequence[float],
                    std: Sequence[float], mix: float = 1.0) -> list[nn.Module]:
    """Copies of ``models`` whose BatchNorm statistics are ``mix`` of the test images' (uint8 NCHW
    ``batches``, read once) and ``1 - mix`` of training's. Returns the models themselves when ``mix`` is 0."""
    mix = check_mix(mix)
    if mix == 0.0:
        return list(models)
    adapted = [copy.deepcopy(m).eval() for m in models]
    saved = []
    for model in adapted:
        layers = batchnorm_layers(model)
        saved.append([(bn.running_mean.clone(), bn.running_var.clone(), bn.momentum) for bn in layers])
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the test batches: order-independent weights
            bn.train()
    device = next(adapted[0].parameters()).device
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    seen = 0
    for batch in batches:
        if len(batch) < 2:  # a batch of one has no variance to estimate
            continue
        x = ((batch.to(device).float().div_(255) - m) / s).contiguous(memory_format=torch.channels_last)
        for model in adapted:
            model(x)
        seen += len(batch)
    if not seen:
        raise ValueError("adapt_bn: no test batch of two or more readable images to estimate statistics on")
    for model, stats in zip(adapted, saved, strict=True):
        for bn, (run_mean, run_var, momentum) in zip(batchnorm_layers(model), stats, strict=True):
            bn.running_mean.mul_(mix).add_(run_mean, alpha=1 - mix)
            bn.running_var.mul_(mix).add_(run_var, alpha=1 - mix)
            bn.momentum = momentum
        model.eval()
    return adapted
