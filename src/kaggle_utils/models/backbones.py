"""Built-in backbones: the architectures used by the APTOS 2019 top solutions.

Architectures are always built from their definition (never ``from_pretrained``, which downloads);
pretrained weights come from :mod:`kaggle_utils.models.weights`. Packages are imported inside the builders so
listing models needs none of them.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from kaggle_utils.models.registry import Backbone, register_model

# (pretraining resolution, dropout) from efficientnet_pytorch.utils.efficientnet_params
_EFFICIENTNET = {0: (224, 0.2), 1: (240, 0.2), 2: (260, 0.3), 3: (300, 0.3),
                 4: (380, 0.4), 5: (456, 0.4), 6: (528, 0.5), 7: (600, 0.5)}
_EFFICIENTNET_LITE = {0: (224, 0.2), 1: (240, 0.2), 2: (260, 0.3)}
# Inception-v4 / Inception-ResNet-v2 (TF-slim ports) expect inputs in [-1, 1]: pretrainedmodels' settings.
_HALF = (0.5, 0.5, 0.5)
# EfficientNet-Lite (TF efficientnet_lite_builder): "Edge models use inception-style MEAN and STDDEV for
# better post-quantization", MEAN_RGB = 127, STDDEV_RGB = 128 (on 0-255). The ported weights agree: they
# classify natural images more confidently with these than with ImageNet statistics.
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


def _efficientnet(variant: str, **kwargs: object) -> Backbone:
    from efficientnet_pytorch import EfficientNet

    # image_size=None selects TF "same" padding computed per input, so every input size pads like TF.
    net = EfficientNet.from_name(variant, image_size=None, include_top=False, **kwargs)
    return Backbone(net, net._bn1.num_features, "extract_features")


def _efficientnet_lite(variant: str, **kwargs: object) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(variant, image_size=None, **kwargs)
    net._fc = nn.Identity()
    return Backbone(net, net._bn1.num_features, "extract_features")


def _pretrainedmodels(arch: str, **kwargs: object) -> Backbone:
    """Cadene's models; their fixed ``AvgPool2d(7|8)`` and classifier are dropped (features() is used)."""
    import pretrainedmodels

    net = getattr(pretrainedmodels, arch)(num_classes=1000, pretrained=None, **kwargs)
    num_features = net.last_linear.in_features
    for attr in ("avg_pool", "avgpool_1a", "dropout", "last_linear"):
        if hasattr(net, attr):
            setattr(net, attr, nn.Identity())
    return Backbone(net, num_features, "features")


for _i, (_size, _drop) in _EFFICIENTNET.items():
    register_model(f"efficientnet-b{_i}", input_size=_size, dropout=_drop, classifier="_fc",
                   source="efficientnet_pytorch")(partial(_efficientnet, f"efficientnet-b{_i}"))

for _name in ("se_resnext50_32x4d", "se_resnext101_32x4d"):
    register_model(_name, input_size=224, dropout=0.2, classifier="last_linear",
                   source="pretrainedmodels")(partial(_pretrainedmodels, _name))

for _name in ("inceptionv4", "inceptionresnetv2"):
    register_model(_name, mean=_HALF, std=_HALF, input_size=299, dropout=0.2, classifier="last_linear",
                   classifier_offset=1, source="pretrainedmodels")(partial(_pretrainedmodels, _name))

for _i, (_size, _drop) in _EFFICIENTNET_LITE.items():
    register_model(f"efficientnet-lite{_i}", mean=_LITE_MEAN, std=_LITE_STD, input_size=_size, dropout=_drop,
                   classifier="_fc", source="efficientnet_lite_pytorch",
                   )(partial(_efficientnet_lite, f"efficientnet-lite{_i}"))
