"""Model registry (timm-like): one decorator registers a backbone under a name.

A registered builder returns a :class:`Backbone`: the network with its ImageNet classifier and fixed-size
pooling removed, the name of the method giving its last feature map, and that map's channel count.
:class:`~kaggle_utils.models.grading.GradingModel` adds pooling, dropout and the grading head::

    @register_model("my-net", input_size=256, classifier="fc")
    def _my_net(**kw) -> Backbone:
        net = MyNet(**kw)        # any nn.Module
        net.fc = nn.Identity()   # the grading head replaces it
        return Backbone(net, num_features=1024, features="forward_features")

:func:`~kaggle_utils.models.factory.create_model` builds a grader from a registered name. ``classifier`` is the key prefix of the ImageNet classifier in the official weight file; those keys
are skipped when pretrained weights are loaded into the backbone (strictly: every other key must match).

The built-in architectures register in :mod:`kaggle_utils.models.backbones`, imported by the package.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

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


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"efficientnet-b*"``), in order."""
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def get_model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Registered: {list(_REGISTRY)}")
    return _REGISTRY[name]
