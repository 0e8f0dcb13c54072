"""ResNet-18 for CIFAR-sized inputs.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385),
in the CIFAR form of kuangliu/pytorch-cifar (``models/resnet.py``) that the robust distillation
papers use as their student: ARD (Goldblum et al., AAAI 2020; goldblum/AdversariallyRobustDistillation,
``models/resnet.py``) and RSLAD (Zi et al., ICCV 2021; zibojia/RSLAD, ``cifar10_models/resnet.py``).

Module names follow that code (``conv1``, ``bn1``, ``layer1.0.shortcut.0`` ...), and `load_state_dict`
also accepts its ``linear.*`` classifier keys, so checkpoints of the reference code load directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.config import EmptyConfig
from kdbench.models.base import Network, NetworkSpec, Normalize

__all__ = ["BasicBlock", "ResNet18", "reference_key_hook"]

StateDictPreHook = Callable[[nn.Module, dict[str, Any], str, Any, bool, list[str], list[str], list[str]], None]


def reference_key_hook(renames: Mapping[str, str], drop: tuple[str, ...] = ()) -> StateDictPreHook:
    """A `load_state_dict` pre-hook that accepts the key names of a reference implementation.

    ``renames`` maps key prefixes of the reference code to ours (``{"linear.": "head."}``); keys starting
    with a prefix in ``drop`` (modules the reference builds but never uses) are discarded.
    """

    def hook(
        module: nn.Module,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for key in list(state_dict):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            if rest.startswith(drop):
                del state_dict[key]
                continue
            for old, new in renames.items():
                if rest.startswith(old) and prefix + new + rest[len(old) :] not in state_dict:
                    state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
                    break

    return hook


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, post-activation; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet18(Network):
    """CIFAR ResNet-18: 3x3 stride-1 stem without max-pool, BasicBlock stages [2, 2, 2, 2] of 64-512 channels.

    Global average pooling (adaptive, so any input of at least 32x32 works: 4x4 final maps at 32x32,
    12x12 at STL-10's 96x96) gives the 512-d feature; a linear layer gives the logits.
    11,173,962 parameters for 10 classes (11,220,132 for 100), as in the reference code.
    """

    Config = EmptyConfig

    def __init__(self, spec: NetworkSpec, config: EmptyConfig, variant: str | None = None):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.in_planes = 64
        self.layer1 = self._make_layer(64, 2, stride=1)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.feature_dim = 512
        self.num_classes = spec.num_classes
        self.head = nn.Linear(self.feature_dim, spec.num_classes)
        # torch leaves Module.register_load_state_dict_pre_hook unannotated (mypy: an untyped call).
        self.register_load_state_dict_pre_hook(reference_key_hook({"linear.": "head."}))  # type: ignore[no-untyped-call]

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        out: Tensor = F.relu(self.bn1(self.conv1(self.normalize(x))), inplace=True)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return out.mean(dim=(2, 3))  # global average pool; deterministic backward on CUDA
