"""CIFAR-10, CIFAR-100 and STL-10, read from torchvision's files or from an ImageFolder tree.

* torchvision's files (``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``) are read
  straight from their arrays (no per-image PIL loop), and fetched by torchvision when the recipe
  allows ``data.download``;
* an ImageFolder tree ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (e.g. the offline JPEG copy
  of CIFAR-10) must carry the standard class names; labels follow the standard order (which for all
  three datasets is the alphabetical order of the names).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import PositiveInt

from kdbench._errors import UserError
from kdbench.config import ConfigT, EmptyConfig, StrictModel
from kdbench.data.base import SPLITS, DatasetInfo, DatasetSource, Split, SplitData
from kdbench.data.decode import DECODE_VERSION, _resize
from kdbench.data.image_folder import _folder_fingerprint, read_image_folder, scan_image_folder

__all__ = ["CIFAR10", "CIFAR10_CLASSES", "CIFAR100", "CIFAR100_CLASSES", "STL10", "STL10_CLASSES", "STL10Config"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# torchvision reads these from the archive's meta file; the standard fine label order is alphabetical.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def _files_fingerprint(paths: Sequence[Path]) -> str:
    parts = []
    for path in sorted(paths):
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return " ".join(parts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _StandardSource(DatasetSource[ConfigT]):
    """A standard dataset readable from torchvision's files or from an ImageFolder tree."""

    name: ClassVar[str]
    tv_folder: ClassVar[str]  # torchvision's folder inside root
    native_size: ClassVar[int]
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]
    class_names: ClassVar[tuple[str, ...]]

    def _image_size(self) -> int:
        return self.native_size

    def info(self) -> DatasetInfo:
        return DatasetInfo(len(self.class_names), self._image_size(), self.mean, self.std, self.class_names)

    # layout ------------------------------------------------------------------------------------

    def _hint(self, download: bool = True) -> str:
        where = f"point KDBENCH_DATA_ROOT at a folder holding {self.name}/ or set data.root in the recipe"
        if download:
            return f"{where}, or set data.download = true"
        return f"{where} with the files already in place ({self.tv_folder}/ or train/ and test/ class folders)"

    def _has_torchvision_files(self) -> bool:
        return self.root is not None and (self.root / self.tv_folder).is_dir()

    def _layout(self, split: Split) -> Literal["torchvision", "folder"]:
        """Which layout to read ``split`` from, downloading first if allowed and nothing is there."""
        if self.root is None:
            raise UserError(
                f"{self.name}: no data folder configured; set the environment variable KDBENCH_DATA_ROOT to a folder "
                f"holding {self.name}/, or set data.root in the recipe (add data.download = true to fetch it)"
            )
        if self._has_torchvision_files():
            return "torchvision"
        if (self.root / split).is_dir():
            return "folder"
        if self.download:
            self._download()
            if self._has_torchvision_files():
                return "torchvision"
        raise UserError(
            f"{self.name}: no data in {self.root} (looked for {self.tv_folder}/ or train/ and test/ class folders); "
            + self._hint()
        )

    def _download(self) -> None:
        assert self.root is not None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._torchvision_dataset("train", download=True)
        except UserError:
            raise
        except Exception as exc:  # network errors come in many types (URLError, OSError, RuntimeError...)
            raise UserError(
                f"{self.name}: download into {self.root} failed ({_one_line(exc)}); {self._hint(download=False)}"
            ) from None

    def _torchvision_dataset(self, split: Split, download: bool = False) -> object:
        raise NotImplementedError

    def _torchvision_files(self, split: Split) -> list[Path]:
        assert self.root is not None
        folder = self.root / self.tv_folder
        return [p for p in folder.iterdir() if p.is_file()]

    # loading -----------------------------------------------------------------------------------

    def _read_torchvision(self, split: Split) -> SplitData:
        try:
            ds = self._torchvision_dataset(split)
        except (RuntimeError, OSError, ValueError) as exc:
            raise UserError(
                f"{self.name}: cannot read {self.root / self.tv_folder if self.root else self.tv_folder} "
                f"({_one_line(exc)}); delete the folder and set data.download = true, or restore its files"
            ) from None
        data = np.ascontiguousarray(ds.data)  # type: ignore[attr-defined]
        images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)  # type: ignore[attr-defined]
        return SplitData(images, labels)

    def _postprocess(self, data: SplitData) -> SplitData:
        return data

    def load(self, split: Split) -> SplitData:
        if split not in SPLITS:
            raise UserError(f"{self.name}: unknown split {split!r}; choose train or test")
        if self._layout(split) == "torchvision":
            data = self._read_torchvision(split)
        else:
            assert self.root is not None
            data, _ = read_image_folder(self.root / split, self.class_names)
        height, width = data.images.shape[2:]
        if (height, width) != (self.native_size, self.native_size):
            raise UserError(
                f"{self.name}: images in {self.root / split if self.root else split} are {width}x{height}, "
                f"expected {self.native_size}x{self.native_size}; use the imagefolder dataset for other sizes"
            )
        return self._postprocess(data)

    def fingerprint(self, split: Split) -> str | None:
        layout = self._layout(split)
        assert self.root is not None
        if layout == "torchvision":
            files = _files_fingerprint(self._torchvision_files(split))
            where = (self.root / self.tv_folder).resolve()
        else:
            listing = scan_image_folder(self.root / split, self.class_names)
            files = _folder_fingerprint(listing)
            where = (self.root / split).resolve()
        config = self.config.model_dump_json()
        return f"{self.name} v{DECODE_VERSION} split={split} layout={layout} root={where} config={config} {files}"


class _CIFAR(_StandardSource[EmptyConfig]):
    native_size = 32

    def canonical_test_order(self) -> bool:
        # torchvision's test_batch is the authors' shuffled order (RobustBench takes its first N);
        # an ImageFolder copy is decoded class by class, so its prefix is one class.
        return self._layout("test") == "torchvision"

    def _torchvision_dataset(self, split: Split, download: bool = False) -> object:
        from torchvision import datasets

        cls = datasets.CIFAR10 if self.name == "cifar10" else datasets.CIFAR100
        return cls(root=str(self.root), train=split == "train", download=download)


class CIFAR10(_CIFAR):
    """CIFAR-10: 50,000 train / 10,000 test images, 32x32, 10 classes."""

    Config = EmptyConfig
    name = "cifar10"
    tv_folder = "cifar-10-batches-py"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2471, 0.2435, 0.2616)
    class_names = CIFAR10_CLASSES


class CIFAR100(_CIFAR):
    """CIFAR-100 (fine labels): 50,000 train / 10,000 test images, 32x32, 100 classes."""

    Config = EmptyConfig
    name = "cifar100"
    tv_folder = "cifar-100-python"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    class_names = CIFAR100_CLASSES


class STL10Config(StrictModel):
    """``image_size``: None keeps the native 96x96; e.g. 32 resizes once at load time (antialiased bilinear)."""

    image_size: PositiveInt | None = None


class STL10(_StandardSource[STL10Config]):
    """STL-10, labelled splits only: 5,000 train / 8,000 test images, 96x96 (or resized), 10 classes.

    torchvision's binaries are read directly rather than through ``torchvision.datasets.STL10``,
    which would checksum the 2.6 GB unlabelled file on every construction and require it to exist.
    """

    Config = STL10Config
    name = "stl10"
    tv_folder = "stl10_binary"
    native_size = 96
    mean = (0.4467, 0.4398, 0.4066)
    std = (0.2603, 0.2566, 0.2713)
    class_names = STL10_CLASSES

    def _image_size(self) -> int:
        size = self.config.image_size
        return self.native_size if size is None else int(size)

    def _has_torchvision_files(self) -> bool:
        if self.root is None:
            return False
        folder = self.root / self.tv_folder
        return all((folder / f"{split}_{kind}.bin").is_file() for split in SPLITS for kind in ("X", "y"))

    def _torchvision_dataset(self, split: Split, download: bool = False) -> object:
        from torchvision import datasets

        return datasets.STL10(root=str(self.root), split=split, download=download)

    def _torchvision_files(self, split: Split) -> list[Path]:
        assert self.root is not None
        return [self.root / self.tv_folder / f"{split}_{kind}.bin" for kind in ("X", "y")]

    def _read_torchvision(self, split: Split) -> SplitData:
        x_path, y_path = self._torchvision_files(split)
        size = self.native_size
        raw = np.fromfile(x_path, dtype=np.uint8)
        labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
        if raw.size != labels.size * 3 * size * size or labels.size == 0 or labels.min() < 0 or labels.max() > 9:
            raise UserError(
                f"stl10: {x_path} and {y_path} do not match (truncated or corrupt); delete {x_path.parent} "
                "and set data.download = true, or restore the files"
            )
        # Stored column-major per channel (as torchvision reads it): transpose H and W.
        images = torch.from_numpy(raw.reshape(-1, 3, size, size)).transpose(2, 3).contiguous()
        return SplitData(images, torch.from_numpy(labels))

    def _postprocess(self, data: SplitData) -> SplitData:
        size = self._image_size()
        if size == self.native_size:
            return data
        out = torch.empty((len(data.images), 3, size, size), dtype=torch.uint8)
        for lo in range(0, len(data.images), 500):  # chunks bound the float32 temporary
            out[lo : lo + 500] = _resize(data.images[lo : lo + 500], size)
        return SplitData(out, data.labels)
