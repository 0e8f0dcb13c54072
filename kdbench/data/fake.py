"""The synthetic ``fake`` dataset: seeded random images for tests and smoke runs."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import Tensor

from kdbench._errors import UserError
from kdbench.config import StrictModel
from kdbench.data.base import SPLITS, DatasetInfo, DatasetSource, Split, SplitData

__all__ = ["FAKE_MAX_BYTES", "FakeConfig", "FakeSource"]


class FakeConfig(StrictModel):
    """Options of the synthetic ``fake`` dataset (sizes kept small: it is meant for tests and smoke runs)."""

    num_classes: int = Field(10, ge=2, le=1000)
    image_size: int = Field(32, ge=4, le=512)
    train_size: PositiveInt = Field(512, le=10_000_000)
    test_size: PositiveInt = Field(256, le=10_000_000)
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _fits_in_memory(self) -> FakeConfig:
        # Checked by `validate`, not discovered as an out-of-memory kill minutes into `run`.
        size = (self.train_size + self.test_size) * 3 * self.image_size**2
        if size > FAKE_MAX_BYTES:
            raise ValueError(
                f"train_size + test_size images of {self.image_size}x{self.image_size} take {size / 2**30:.1f} GiB, "
                f"above the {FAKE_MAX_BYTES / 2**30:.0f} GiB allowed for synthetic data; use fewer or smaller images"
            )
        return self


#: Largest decoded size of the synthetic dataset (uint8 bytes of both splits).
FAKE_MAX_BYTES = 4 * 2**30


class FakeSource(DatasetSource[FakeConfig]):
    """Deterministic, learnable synthetic images: one smooth random prototype per class plus pixel noise.

    Unlike torchvision's FakeData the label is visible in the image, so a test can check that
    training reduces the loss. Prototypes are low-frequency (4x4 upsampled) so they survive random
    crops and flips; labels are balanced and shuffled. The same config always gives the same tensors.
    """

    Config = FakeConfig
    name = "fake"
    noise_std: ClassVar[float] = 0.1

    def info(self) -> DatasetInfo:
        cfg = self.config
        names = tuple(f"class{i}" for i in range(cfg.num_classes))
        # Approximate statistics of uniform prototypes blurred by the upsampling.
        return DatasetInfo(cfg.num_classes, cfg.image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), names)

    def _prototypes(self) -> Tensor:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        low = torch.rand((cfg.num_classes, 3, 4, 4), generator=gen)
        return F.interpolate(low, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)

    def load(self, split: Split) -> SplitData:
        if split not in SPLITS:
            raise UserError(f"fake: unknown split {split!r}; choose train or test")
        cfg = self.config
        n = cfg.train_size if split == "train" else cfg.test_size
        # Each split has its own stream, so changing test_size never changes the train images.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + (1 if split == "train" else 2))
        labels = (torch.arange(n) % cfg.num_classes)[torch.randperm(n, generator=gen)]
        prototypes = self._prototypes()
        images = torch.empty((n, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)
        for lo in range(0, n, 1024):
            chunk = labels[lo : lo + 1024]
            noise = torch.randn((len(chunk), 3, cfg.image_size, cfg.image_size), generator=gen) * self.noise_std
            images[lo : lo + 1024] = (prototypes[chunk] + noise).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        return SplitData(images, labels.to(torch.int64))
