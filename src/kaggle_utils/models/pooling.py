"""Global pooling of a backbone's feature map to one vector per image.

Both poolings are adaptive, so any input size works; the fixed ``AvgPool2d(7)`` / ``AvgPool2d(8)`` of the
pretrainedmodels networks (which breaks at 256 or 320 px) is never used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLS = ("avg", "gem")


class AvgPool(nn.Module):
    """Global average pooling: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class GeM(nn.Module):
    """Generalised-mean pooling ``mean(clamp(x, eps) ** p) ** (1 / p)`` with a learnable ``p``.

    p = 1 is average pooling (of the clamped map), p -> inf tends to max pooling; p starts at 3 as in
    Radenović et al. The clamp keeps ``x ** p`` real for negative activations (Swish dips below 0) and
    keeps the gradient of ``p`` finite.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)  # p < 1 is not a mean any more and can blow up
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(p), 1).pow(1.0 / p).flatten(1)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, eps={self.eps}"


def build_pool(name: str, **kwargs: float) -> nn.Module:
    """``"avg"`` or ``"gem"`` (kwargs go to :class:`GeM`)."""
    if name == "avg":
        return AvgPool()
    if name == "gem":
        return GeM(**kwargs)
    raise ValueError(f"unknown pool {name!r}; choose one of {POOLS}")
