"""DR grading models: ``create_model(name, head, pool, pretrained)`` over a timm-like registry.

    >>> model = create_model("efficientnet-lite0", head="ordinal", pool="gem", pretrained=True)
    >>> grades = model.decode(model(x))          # (N,) continuous grades in [0, 4]
    >>> targets = encode_targets(labels, model.head)
"""

from .grading import GradingModel
from .heads import HEADS, IMAGENET_HEAD, MAX_GRADE, NUM_GRADES, decode, encode_targets, num_outputs
from .pooling import POOLS, GeM, build_pool
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)

__all__ = [
    "HEADS", "IMAGENET_HEAD", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_GRADE", "NUM_GRADES", "POOLS",
    "Backbone", "GeM", "GradingModel", "ModelSpec",
    "build_pool", "create_model", "decode", "encode_targets", "get_model_spec", "list_models", "num_outputs",
    "register_model",
]
