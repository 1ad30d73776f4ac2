"""Model registry (timm-like): one decorator registers a backbone, ``create_model`` builds a grader from it.

A registered builder returns a :class:`Backbone`: the network with its ImageNet classifier and fixed-size
pooling removed, the name of the method giving its last feature map, and that map's channel count.
:class:`~kaggle_utils.models.grading.GradingModel` adds pooling, dropout and the grading head::

    @register_model("my-net", input_size=256, classifier="fc")
    def _my_net(**kw) -> Backbone:
        net = MyNet(**kw)        # any nn.Module
        net.fc = nn.Identity()   # the grading head replaces it
        return Backbone(net, num_features=1024, features="forward_features")

``classifier`` is the key prefix of the ImageNet classifier in the official weight file; those keys
are skipped when pretrained weights are loaded into the backbone (strictly: every other key must match).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .heads import IMAGENET_HEAD, check_head
from .pooling import POOLS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """What a builder returns: ``getattr(module, features)(x)`` gives the (N, num_features, H, W) map."""

    module: nn.Module
    num_features: int
    features: str = "forward"


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about a registered model without building it (data code needs mean/std/size)."""

    name: str
    builder: Callable[..., Backbone] = field(repr=False, compare=False)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224  # the resolution it was pretrained at; every model accepts 224-512
    dropout: float = 0.2  # default dropout before the head
    classifier: str | None = None  # ImageNet classifier key prefix in the official weight file
    classifier_offset: int = 0  # leading rows to drop from it (1001-class files with a background class)
    source: str = ""  # package the architecture comes from


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, overwrite: bool = False, **spec: object) -> Callable:
    """Decorator registering ``builder(**kwargs) -> Backbone`` under ``name`` (spec fields as keywords)."""

    def decorate(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"model {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, **spec)
        return builder

    return decorate


def _builtin() -> None:
    from . import backbones  # noqa: F401  (registers the built-in models on import)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"efficientnet-b*"``), in order."""
    _builtin()
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def get_model_spec(name: str) -> ModelSpec:
    _builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Registered: {list(_REGISTRY)}")
    return _REGISTRY[name]


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
            :func:`kaggle_utils.weights.resolve_weights` (sha256-verified); a path = that file (or folder),
            also verified against the manifest.
        dropout: before the head; None = the model's default (``get_model_spec(name).dropout``).
        bn_momentum: BatchNorm running-stat momentum for every BN layer; None keeps the builder's. The
            TF-ported EfficientNets use 0.01, whose running stats lag far behind the weights when a run is
            only a few hundred steps (APTOS/IDRiD-sized folds): eval-mode predictions then drift off while
            the training loss falls. 0.1 (PyTorch's default) tracks them.
        kwargs: passed to the backbone builder (e.g. ``drop_connect_rate`` for EfficientNets).
    """
    from .grading import GradingModel

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
        from .. import weights

        path = weights.resolve_weights(name, None if pretrained is True else pretrained)
        model.load_pretrained(weights.load_weights(path), source=str(path))
    return model
