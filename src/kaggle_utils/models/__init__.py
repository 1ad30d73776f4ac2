"""DR grading models: ``create_model(name, head, pool, pretrained)`` over a timm-like registry.

    >>> model = create_model("efficientnet-lite0", head="ordinal", pool="gem", pretrained=True)
    >>> grades = model.decode(model(x))          # (N,) continuous grades in [0, 4]
    >>> targets = encode_targets(labels, model.head)
"""

from kaggle_utils.models import backbones  # noqa: F401  (registers the built-in models)
from kaggle_utils.models.factory import create_model
from kaggle_utils.models.grading import GradingModel
from kaggle_utils.models.heads import (
    HEADS,
    IMAGENET_HEAD,
    MAX_GRADE,
    NUM_GRADES,
    decode,
    encode_targets,
    num_outputs,
)
from kaggle_utils.models.pooling import POOLS, GeM, build_pool
from kaggle_utils.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    ModelSpec,
    get_model_spec,
    list_models,
    register_model,
)
from kaggle_utils.models.weights import WeightsError, load_weights, resolve_weights, verify_file

__all__ = [
    "HEADS", "IMAGENET_HEAD", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_GRADE", "NUM_GRADES", "POOLS",
    "Backbone", "GeM", "GradingModel", "ModelSpec",
    "build_pool", "create_model", "decode", "encode_targets", "get_model_spec", "list_models", "num_outputs",
    "register_model", "WeightsError", "load_weights", "resolve_weights", "verify_file",
]
