"""Pre-activation ResNet-18 for CIFAR-sized inputs.

He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016 (arXiv:1603.05027), in
the CIFAR form used by robust-training work such as Rice, Wong & Kolter, "Overfitting in adversarially
robust deep learning", ICML 2020 (locuslab/robust_overfitting, ``preactresnet.py``) and Wong et al.,
"Fast is better than free", ICLR 2020: 3x3 stride-1 stem, no max-pool, BN-ReLU-conv blocks whose
projection shortcut (a bare 1x1 conv) takes the pre-activated input, and a final BN + ReLU before pooling.

Module names follow that code, and `load_state_dict` also accepts its ``linear.*`` classifier keys.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.config import EmptyConfig
from kdbench.models.base import Network, NetworkSpec, Normalize
from kdbench.models.cifar_resnet import reference_key_hook

__all__ = ["PreActBlock", "PreActResNet18"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice; the 1x1 projection shortcut (when the shape changes) sees the pre-activation."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = F.relu(self.bn1(x))
        shortcut: Tensor = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        return out + shortcut


class PreActResNet18(Network):
    """CIFAR PreAct ResNet-18: stages [2, 2, 2, 2] of 64-512 channels, final BN + ReLU, global average pool.

    Pooling is adaptive, so any input of at least 32x32 works. Features are 512-d.
    11,172,170 parameters for 10 classes (11,218,340 for 100), as in the reference code.
    """

    Config = EmptyConfig

    def __init__(self, spec: NetworkSpec, config: EmptyConfig, variant: str | None = None):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.in_planes = 64
        self.layer1 = self._make_layer(64, 2, stride=1)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.bn = nn.BatchNorm2d(512)
        self.feature_dim = 512
        self.num_classes = spec.num_classes
        self.head = nn.Linear(self.feature_dim, spec.num_classes)
        # torch leaves Module.register_load_state_dict_pre_hook unannotated (mypy: an untyped call).
        self.register_load_state_dict_pre_hook(reference_key_hook({"linear.": "head."}))  # type: ignore[no-untyped-call]

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out), inplace=True)
        return out.mean(dim=(2, 3))  # global average pool; deterministic backward on CUDA
