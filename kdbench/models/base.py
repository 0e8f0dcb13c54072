"""The network interface shared by teachers and students.

A `Network` maps images in [0, 1] to logits and exposes the penultimate pooled feature, which
feature-distillation methods (CRD, GACD) contrast. Input normalisation lives inside the network, so
attacks work in pixel space and eps = 8/255 means what robustness papers mean by it.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from kdbench.config import EmptyConfig, StrictModel

__all__ = ["ModelOutput", "Network", "NetworkSpec", "Normalize", "freeze"]


class ModelOutput(NamedTuple):
    """What a network returns for a batch: ``logits: (B, C)`` and ``features: (B, D)``."""

    logits: Tensor
    features: Tensor


class NetworkSpec(NamedTuple):
    """What a model needs to know about the data: class count, input size and channel statistics."""

    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics as buffers so they follow ``.to()``."""

    mean: Tensor
    std: Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Network(nn.Module):
    """Base class of every registered model.

    Subclasses implement `features` (images -> penultimate pooled features) and set `self.head`
    (features -> logits), `self.feature_dim` and `self.num_classes`. The constructor signature is
    ``(spec: NetworkSpec, config: Config, variant: str | None)``; ``variant`` is the part after a colon
    in the recipe's model name (``timm:resnet50``) and is None for plain names.
    """

    Config: ClassVar[type[StrictModel]] = EmptyConfig
    #: True when the model takes a ``name:variant`` (e.g. the timm adapter).
    accepts_variant: ClassVar[bool] = False

    feature_dim: int
    num_classes: int
    head: nn.Module

    def features(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` in [0, 1] -> ``(B, feature_dim)``."""
        raise NotImplementedError

    def forward_all(self, x: Tensor) -> ModelOutput:
        """Logits and features in one pass."""
        feats = self.features(x)
        return ModelOutput(self.head(feats), feats)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, H, W)`` in [0, 1] -> ``logits: (B, num_classes)``."""
        logits: Tensor = self.head(self.features(x))
        return logits


_Module = TypeVar("_Module", bound=nn.Module)


def freeze(module: _Module) -> _Module:
    """Eval mode and no parameter gradients: how the teacher runs. Returns ``module`` itself."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
