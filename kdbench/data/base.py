"""The dataset-source interface: where images come from, decoded once into uint8 tensors.

A source returns whole splits as ``images: uint8 (N, C, H, W)`` and ``labels: int64 (N,)``. The core
caches them on disk, moves them to the training device and augments there (kdbench.data.loader), so
a source never deals with batching, workers or transforms.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Generic, Literal, NamedTuple

from torch import Tensor

from kdbench.config import ConfigT, EmptyConfig, StrictModel

__all__ = ["SPLITS", "DatasetInfo", "DatasetSource", "Split", "SplitData"]

Split = Literal["train", "test"]
#: The splits every source provides, in the order they are decoded.
SPLITS: tuple[Split, ...] = ("train", "test")


class SplitData(NamedTuple):
    """One split in memory: ``images: uint8 (N, C, H, W)``, ``labels: int64 (N,)``."""

    images: Tensor
    labels: Tensor


class DatasetInfo(NamedTuple):
    """Static facts about a dataset that models and methods need before any image is read."""

    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()


class DatasetSource(Generic[ConfigT]):
    """Base class of every registered dataset.

    Constructor: ``(config: Config, root: Path | None, download: bool)``. ``root`` is the dataset's own
    folder (``$KDBENCH_DATA_ROOT/<name>`` unless the recipe sets ``data.root``); ``download`` says
    whether fetching from the internet is allowed. Implement `info` and `load`; `fingerprint`
    enables the on-disk decode cache. Subclass ``DatasetSource[MyConfig]`` (with ``Config = MyConfig``)
    to have ``self.config`` typed as ``MyConfig``.
    """

    Config: ClassVar[type[StrictModel]] = EmptyConfig

    def __init__(self, config: ConfigT, root: Path | None, download: bool):
        self.config: ConfigT = config
        self.root = root
        self.download = download

    def info(self) -> DatasetInfo:
        raise NotImplementedError

    def load(self, split: Split) -> SplitData:
        """Decode ``split`` completely. May raise `kdbench.UserError` with a how-to-fix message."""
        raise NotImplementedError

    def fingerprint(self, split: Split) -> str | None:
        """A string that changes whenever the decoded split would change; None disables caching."""
        return None

    def canonical_test_order(self) -> bool:
        """Whether the test split's decode order is a canonical one that is fair to take a prefix of.

        True only for files whose order their authors fixed and shuffled (torchvision's CIFAR files):
        the evaluation then takes the first N images, as RobustBench does. False (the default) for any
        order that is an artefact of the storage, e.g. class folders decoded one after the other; the
        evaluation then uses a fixed class-stratified selection (`kdbench.evaluation.selection`).
        """
        return False
