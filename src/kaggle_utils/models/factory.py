"""``create_model``: the one door to a grading model (registered backbone + pooling + head + weights)."""

from __future__ import annotations

import os

from torch import nn

from kaggle_utils.models.heads import IMAGENET_HEAD, check_head
from kaggle_utils.models.pooling import POOLS
from kaggle_utils.models.registry import get_model_spec


def create_model(
    name: str,
    head: str = "regression",
    pool: str = "avg",
    pretrained: bool | str | os.PathLike = False,
    dropout: float | None = None,
    bn_momentum: float | None = 0.1,
    **kwargs: object,
):
    """Build a :class:`GradingModel`.

    Args:
        name: a name from :func:`list_models`.
        head: ``"regression"`` (N,), ``"ordinal"`` (N, 4) or ``"classification"`` (N, 5) outputs; or
            ``"imagenet"``: the backbone's original 1000-class classifier (to check pretrained weights).
        pool: ``"avg"`` or ``"gem"`` (learnable p).
        pretrained: False = random init; True = the official ImageNet weights found offline by
            :func:`kaggle_utils.models.weights.resolve_weights` (sha256-verified); a path = that file (or folder),
            also verified against the manifest.
        dropout: before the head; None = the model's default (``get_model_spec(name).dropout``).
        bn_momentum: BatchNorm running-stat momentum for every BN layer; None keeps the builder's. The
            TF-ported EfficientNets use 0.01, whose running stats lag far behind the weights when a run is
            only a few hundred steps (APTOS/IDRiD-sized folds): eval-mode predictions then drift off while
            the training loss falls. 0.1 (PyTorch's default) tracks them.
        kwargs: passed to the backbone builder (e.g. ``drop_connect_rate`` for EfficientNets).
    """
    from kaggle_utils.models.grading import GradingModel

    spec = get_model_spec(name)
    check_head(head, allow_imagenet=True)
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")
    if dropout is None:
        dropout = 0.0 if head == IMAGENET_HEAD else spec.dropout
    model = GradingModel(spec, spec.builder(**kwargs), head=head, pool=pool, dropout=dropout)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = bn_momentum
    if pretrained is not False and pretrained is not None:
        from kaggle_utils.models import weights

        path = weights.resolve_weights(name, None if pretrained is True else pretrained)
        model.load_pretrained(weights.load_weights(path), source=str(path))
    return model
