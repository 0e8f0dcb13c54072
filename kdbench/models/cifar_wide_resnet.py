"""Wide residual networks (WRN-34-10, WRN-28-10) for CIFAR-sized inputs.

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146), in the form of the
TRADES code (Zhang et al., ICML 2019; yaodongyu/TRADES, ``models/wideresnet.py``), which ARD
(goldblum/AdversariallyRobustDistillation) and RSLAD (zibojia/RSLAD, ``cifar10_models/wideresnet.py``)
copy for their robust teachers: pre-activation BN-ReLU-conv blocks, a 1x1 projection shortcut taken from
the pre-activated input where the width changes, optional dropout between the two convolutions, and a
final BN + ReLU before global average pooling. Initialisation follows that code (conv weights
N(0, 2 / fan_out), BN weight 1 and bias 0, linear bias 0).

The reference code also builds a ``sub_block1`` it never uses in ``forward``; it is left out here
(WRN-34-10 then has 46,160,474 parameters for 10 classes instead of the reference's 48,262,586),
and `load_state_dict` drops its keys and accepts the reference ``fc.*`` classifier keys, so TRADES and
RSLAD teacher checkpoints load directly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdbench.config import StrictModel
from kdbench.models.base import Network, NetworkSpec, Normalize
from kdbench.models.cifar_resnet import reference_key_hook

__all__ = ["WRN28x10", "WRN34x10", "WideBasicBlock", "WideResNet", "WideResNetConfig"]


class WideResNetConfig(StrictModel):
    """Options of the wide ResNets."""

    #: Dropout probability between the two convolutions of each block (the reference default is 0).
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Batch-norm momentum in PyTorch's convention (weight of the new batch statistics); 0.1 as in TRADES.
    bn_momentum: float = Field(0.1, gt=0.0, le=1.0)


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the input or a 1x1 projection of its pre-activation."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float, bn_momentum: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act: Tensor = self.relu1(self.bn1(x))
        out: Tensor = self.relu2(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        # As in the reference: identity shortcut from the raw input, projection from the pre-activation.
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """``num_blocks`` wide blocks; the first changes width and stride."""

    def __init__(
        self, num_blocks: int, in_planes: int, out_planes: int, stride: int, dropout: float, bn_momentum: float
    ):
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout, bn_momentum
                )
                for i in range(num_blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out


class WideResNet(Network):
    """WRN-``depth``-``width``: a 16-channel 3x3 stem and three groups of (depth - 4) / 6 wide blocks.

    Group widths are 16, 32 and 64 times ``width``, strides 1, 2, 2; the final BN + ReLU output is
    average-pooled (adaptively, so any input of at least 32x32 works) into a ``64 * width``-d feature.
    Subclasses set ``depth`` and ``width``.
    """

    Config = WideResNetConfig
    depth: ClassVar[int]
    width: ClassVar[int]

    def __init__(self, spec: NetworkSpec, config: WideResNetConfig, variant: str | None = None):
        super().__init__()
        if (self.depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}")
        n = (self.depth - 4) // 6
        channels = [16, 16 * self.width, 32 * self.width, 64 * self.width]
        drop, mom = config.dropout, config.bn_momentum
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop, mom)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop, mom)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop, mom)
        self.bn1 = nn.BatchNorm2d(channels[3], momentum=mom)
        self.relu = nn.ReLU(inplace=True)
        self.feature_dim = channels[3]
        self.num_classes = spec.num_classes
        self.head = nn.Linear(self.feature_dim, spec.num_classes)
        self._init_weights()
        # torch leaves Module.register_load_state_dict_pre_hook unannotated (mypy: an untyped call).
        self.register_load_state_dict_pre_hook(reference_key_hook({"fc.": "head."}, drop=("sub_block1.",)))  # type: ignore[no-untyped-call]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return out.mean(dim=(2, 3))  # global average pool; deterministic backward on CUDA


class WRN34x10(WideResNet):
    """WRN-34-10, the usual robust CIFAR teacher (TRADES, ARD, RSLAD). 46,160,474 parameters for 10 classes."""

    depth = 34
    width = 10


class WRN28x10(WideResNet):
    """WRN-28-10. 36,479,194 parameters for 10 classes."""

    depth = 28
    width = 10
