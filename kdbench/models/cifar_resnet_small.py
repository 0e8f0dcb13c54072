"""The small CIFAR ResNets: ResNet-8/20/32/56 (He et al. 2016, section 4.2) and RepDistiller's x4 variants.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385):
a 3x3 stem and three stages of ``n`` basic blocks with 16, 32, 64 channels (strides 1, 2, 2), global
average pooling and a linear classifier; depth = 6n + 2. ``resnet8x4`` and ``resnet32x4`` widen the
stages to 64, 128, 256 (stem 32) as in RepDistiller (Tian et al., ICLR 2020,
HobbitLong/RepDistiller ``models/resnet.py``), the common student/teacher pair of KD benchmarks.
Shortcuts that change shape use a 1x1 convolution with batch norm (RepDistiller's ``downsample``).

Sizes at 10 classes: resnet8 78k parameters (about 12 MFLOPs per 32x32 image), resnet20 0.27M (41M),
resnet32 0.47M, resnet56 0.86M, resnet8x4 1.2M, resnet32x4 7.4M. They make CPU-sized experiments
(the quickstart recipe) possible.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from kdbench.config import EmptyConfig
from kdbench.models.base import Network, NetworkSpec, Normalize
from kdbench.models.cifar_resnet import BasicBlock

__all__ = ["ResNet8", "ResNet8x4", "ResNet20", "ResNet32", "ResNet32x4", "ResNet56", "SmallResNet"]


class SmallResNet(Network):
    """Three-stage CIFAR ResNet of depth ``6n + 2``; subclasses fix ``depth`` and ``widths``."""

    Config = EmptyConfig
    depth: ClassVar[int] = 20
    stem: ClassVar[int] = 16
    widths: ClassVar[tuple[int, int, int]] = (16, 32, 64)

    def __init__(self, spec: NetworkSpec, config: EmptyConfig, variant: str | None = None):
        super().__init__()
        if (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {self.depth}")
        blocks = (self.depth - 2) // 6
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(3, self.stem, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.stem)
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_planes = self.stem
        for i, width in enumerate(self.widths):
            layers: list[nn.Module] = []
            for j in range(blocks):
                layers.append(BasicBlock(in_planes, width, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_dim = in_planes
        self.num_classes = spec.num_classes
        self.head = nn.Linear(in_planes, spec.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))  # global average pool; deterministic backward on CUDA


class ResNet8(SmallResNet):
    """ResNet-8 for CIFAR (He et al. 2016): 1 block per stage, 16/32/64 channels, 78k parameters."""

    depth = 8


class ResNet20(SmallResNet):
    """ResNet-20 for CIFAR (He et al. 2016): 3 blocks per stage, 16/32/64 channels, 0.27M parameters."""

    depth = 20


class ResNet32(SmallResNet):
    """ResNet-32 for CIFAR (He et al. 2016): 5 blocks per stage, 16/32/64 channels, 0.47M parameters."""

    depth = 32


class ResNet56(SmallResNet):
    """ResNet-56 for CIFAR (He et al. 2016): 9 blocks per stage, 16/32/64 channels, 0.86M parameters."""

    depth = 56


class ResNet8x4(SmallResNet):
    """ResNet-8x4 (RepDistiller): ResNet-8 with 4x wider stages (64/128/256), 1.2M parameters."""

    depth = 8
    stem = 32
    widths = (64, 128, 256)


class ResNet32x4(SmallResNet):
    """ResNet-32x4 (RepDistiller): ResNet-32 with 4x wider stages (64/128/256), 7.4M parameters."""

    depth = 32
    stem = 32
    widths = (64, 128, 256)
