"""MobileNetV2 for CIFAR-sized inputs, as the robust distillation papers use it.

Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018 (arXiv:1801.04381), in the CIFAR form of kuangliu/pytorch-cifar ``models/mobilenetv2.py``,
copied unchanged by ARD (Goldblum et al., AAAI 2020; goldblum/AdversariallyRobustDistillation,
``models/mobilenetv2.py``) and RSLAD (Zi et al., ICCV 2021; zibojia/RSLAD,
``cifar10_models/mobilenet_v2.py``). It differs from the ImageNet network of the paper in three ways:
the stem is a stride-1 3x3 conv, the second stage has stride 1 instead of 2 (so a 32x32 input ends at
4x4), and stride-1 blocks whose width changes get a 1x1 conv + BN projection shortcut (the paper has no
shortcut there). There is no ReLU6 either: plain ReLU, as in that code.

Module names follow that code, and `load_state_dict` also accepts its ``linear.*`` classifier keys.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.config import EmptyConfig
from kdbench.models.base import Network, NetworkSpec, Normalize
from kdbench.models.cifar_resnet import reference_key_hook

__all__ = ["InvertedResidual", "MobileNetV2"]


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear project, each with BN; a shortcut only at stride 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(Network):
    """CIFAR MobileNetV2: 32-channel stride-1 stem, 17 inverted residual blocks, 1x1 conv to 1280, BN, ReLU.

    Global average pooling (adaptive, so any input of at least 32x32 works) gives the 1280-d feature; a
    linear layer gives the logits. 2,296,922 parameters for 10 classes (2,412,212 for 100), as in the
    reference code.
    """

    Config = EmptyConfig
    #: (expansion, out_planes, num_blocks, stride) per stage; stage 2 has stride 1 instead of 2 for CIFAR.
    cfg: ClassVar[tuple[tuple[int, int, int, int], ...]] = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, spec: NetworkSpec, config: EmptyConfig, variant: str | None = None):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.layers = self._make_layers(in_planes=32)
        self.conv2 = nn.Conv2d(320, 1280, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.feature_dim = 1280
        self.num_classes = spec.num_classes
        self.head = nn.Linear(self.feature_dim, spec.num_classes)
        # torch leaves Module.register_load_state_dict_pre_hook unannotated (mypy: an untyped call).
        self.register_load_state_dict_pre_hook(reference_key_hook({"linear.": "head."}))  # type: ignore[no-untyped-call]

    def _make_layers(self, in_planes: int) -> nn.Sequential:
        layers = []
        for expansion, out_planes, num_blocks, stride in self.cfg:
            for s in [stride] + [1] * (num_blocks - 1):
                layers.append(InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))), inplace=True)
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return out.mean(dim=(2, 3))  # global average pool; deterministic backward on CUDA
