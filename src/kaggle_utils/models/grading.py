"""GradingModel: backbone feature map -> global pooling -> dropout -> linear head."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from kaggle_utils.models import heads
from kaggle_utils.models.pooling import build_pool
from kaggle_utils.models.registry import Backbone, ModelSpec
from kaggle_utils.models.weights import WeightsError


class GradingModel(nn.Module):
    """A DR grader. ``forward`` returns raw outputs (see :mod:`.heads` for shapes); ``decode`` turns them into
    a continuous grade in [0, 4].

    Inputs are float (N, 3, H, W) images scaled to [0, 1] and normalised with ``mean``/``std``, which differ
    per model (ImageNet statistics for EfficientNet-B*/SE-ResNeXt; 0.5/0.5 for Inception-v4 /
    Inception-ResNet-v2; 127/255, 128/255 for EfficientNet-Lite). Any H, W in 224-512 works.
    """

    def __init__(self, spec: ModelSpec, backbone: Backbone, head: str = "regression", pool: str = "avg",
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.head = heads.check_head(head, allow_imagenet=True)
        self.pool = pool
        self.mean, self.std, self.input_size = spec.mean, spec.std, spec.input_size
        self.num_features = backbone.num_features
        self.num_outputs = heads.num_outputs(head)
        self.dropout_rate = float(dropout)
        self.channels_last = False
        self._features = backbone.features

        self.backbone = backbone.module
        self.pooling = build_pool(pool)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.fc = nn.Linear(self.num_features, self.num_outputs)

    @property
    def default_config(self) -> dict[str, Any]:
        """JSON-able description: enough to rebuild (name/head/pool/dropout) and to feed it (mean/std/size)."""
        return {
            "name": self.name, "head": self.head, "pool": self.pool, "dropout": self.dropout_rate,
            "mean": list(self.mean), "std": list(self.std), "input_size": self.input_size,
            "num_features": self.num_features, "num_outputs": self.num_outputs,
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, (N, num_features, H', W')."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return getattr(self.backbone, self._features)(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.dropout(self.pooling(features)))
        return out[:, 0] if self.head == "regression" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_channels_last(self, enable: bool = True) -> GradingModel:
        """NHWC weights and inputs. On CPU (oneDNN) a train step of EfficientNet-B0 / SE-ResNeXt50 runs
        2-5x faster than NCHW, whose depthwise/grouped convs are slow; on GPUs it helps under AMP."""
        self.channels_last = enable
        return self.to(memory_format=torch.channels_last if enable else torch.contiguous_format)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> expected grade in [0, 4], shape (N,)."""
        if self.head == heads.IMAGENET_HEAD:
            raise ValueError("the imagenet head predicts ImageNet classes, not DR grades")
        return heads.decode(outputs, self.head)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Pooling (GeM's p) and the final linear layer: the part that starts untrained."""
        return itertools.chain(self.pooling.parameters(), self.fc.parameters())

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze/unfreeze the backbone (head warm-up before fine-tuning everything)."""
        for p in self.backbone.parameters():
            p.requires_grad_(trainable)

    def load_pretrained(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load an official ImageNet state dict into the backbone, strictly; the grading head stays new.

        With ``head="imagenet"`` the file's classifier goes into ``fc`` (dropping the background row of
        1001-class Inception files).
        """
        prefix = self.spec.classifier
        is_cls = (lambda k: k.startswith(prefix + ".")) if prefix else (lambda k: False)
        body = {k: v for k, v in state_dict.items() if not is_cls(k)}
        try:
            self.backbone.load_state_dict(body, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{source} does not fit the {self.name} backbone: {exc}") from exc
        if self.head != heads.IMAGENET_HEAD:
            return
        try:
            off = self.spec.classifier_offset
            self.fc.load_state_dict({"weight": state_dict[f"{prefix}.weight"][off:],
                                     "bias": state_dict[f"{prefix}.bias"][off:]})
        except (KeyError, RuntimeError) as exc:
            raise WeightsError(f"{source} has no usable {prefix!r} ImageNet classifier: {exc}") from exc
