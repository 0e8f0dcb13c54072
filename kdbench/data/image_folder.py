"""ImageFolder trees ``<split>/<class>/*.jpg``: scanning, decoding, fingerprints, and the ``imagefolder`` dataset.

Classes are the sub-folders in alphabetical order (torchvision's ImageFolder rule); files are read in
name order. The fingerprint covers every file's class folder, name, label, size, mtime and inode, so a
changed tree is decoded again and a stale decoded split is never reused."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from pydantic import PositiveInt, field_validator

from kdbench._errors import UserError
from kdbench.config import StrictModel
from kdbench.data.base import SPLITS, DatasetInfo, DatasetSource, Split, SplitData
from kdbench.data.decode import (
    DECODE_VERSION,
    IMAGE_EXTENSIONS,
    decode_image,
    decode_images,
    decoder_name,
)

__all__ = ["ImageFolderConfig", "ImageFolderSource", "ImageFolderSplit", "read_image_folder", "scan_image_folder"]


class ImageFolderSplit(NamedTuple):
    """The files of one split of an ImageFolder tree, in decode order (sorted classes, sorted files)."""

    classes: tuple[str, ...]
    files: list[Path]
    labels: list[int]
    total_bytes: int
    newest_mtime_ns: int
    #: ``(size, mtime_ns, inode)`` of each file, in the order of ``files``.
    stats: tuple[tuple[int, int, int], ...] = ()


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class folders in ``split_dir`` (hidden folders are skipped)."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: folder not found; an ImageFolder tree needs train/ and test/ class folders")
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(f"{split_dir}: no class folders; put each class's images in {split_dir}/<class name>/")
    return names


def scan_image_folder(split_dir: Path, classes: Sequence[str] | None = None) -> ImageFolderSplit:
    """List a split's image files with their labels, sizes and modification times.

    ``classes`` fixes the label of each class name (index in the sequence); the folder must then hold
    exactly those class folders. Without it the labels are the sorted folder names' positions.
    The stat data doubles as the cheap change detector for the decode cache.
    """
    found = _class_folders(split_dir)
    if classes is None:
        classes = found
    elif sorted(classes) != found:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        raise UserError(
            f"{split_dir}: class folders do not match the expected classes ({'; '.join(parts)}); "
            f"expected exactly: {', '.join(classes)}"
        )
    label_of = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    total_bytes = 0
    newest = 0
    stats: list[tuple[int, int, int]] = []
    for name in found:
        folder = split_dir / name
        entries = sorted((e for e in os.scandir(folder) if e.is_file() and _is_image(e.name)), key=lambda e: e.name)
        if not entries:
            raise UserError(
                f"{folder}: no images (looked for {', '.join(IMAGE_EXTENSIONS)} files); add some or remove it"
            )
        for entry in entries:
            st = entry.stat()
            total_bytes += st.st_size
            newest = max(newest, st.st_mtime_ns)
            stats.append((st.st_size, st.st_mtime_ns, st.st_ino))
            files.append(Path(entry.path))
            labels.append(label_of[name])
    return ImageFolderSplit(tuple(classes), files, labels, total_bytes, newest, tuple(stats))


def read_image_folder(
    split_dir: Path, classes: Sequence[str] | None = None, image_size: int | None = None
) -> tuple[SplitData, tuple[str, ...]]:
    """Decode one split of an ImageFolder tree; returns the data and the class names (label order)."""
    listing = scan_image_folder(split_dir, classes)
    images = decode_images(listing.files, image_size)
    labels = torch.tensor(listing.labels, dtype=torch.int64)
    return SplitData(images, labels), listing.classes


def _folder_fingerprint(listing: ImageFolderSplit) -> str:
    """Cheap but sound: one hash over every file's class folder, name, label, size, mtime and inode.

    Per file, not in aggregate: swapping two files between class folders (a label fix keeping names,
    sizes and the newest mtime) changes the hash, so the stale decoded split is never reused. The
    inode catches a swap of two files with equal size and mtime (a rename keeps a file's inode).
    """
    names = hashlib.sha256()
    for i, path in enumerate(listing.files):
        size, mtime, inode = listing.stats[i] if listing.stats else (-1, -1, -1)
        names.update(f"{path.parent.name}/{path.name}\0{listing.labels[i]}\0{size}\0{mtime}\0{inode}\n".encode())
    return (
        f"files={len(listing.files)} bytes={listing.total_bytes} mtime_ns={listing.newest_mtime_ns} "
        f"names={names.hexdigest()[:16]} decoder={decoder_name()}"
    )


# --------------------------------------------------------------------------------------------------
# The imagefolder dataset
# --------------------------------------------------------------------------------------------------


class ImageFolderConfig(StrictModel):
    """Options of the ``imagefolder`` dataset.

    ``image_size``: None requires all images to share one size; a number resizes every image to
    ``image_size x image_size`` (antialiased bilinear) at decode time. ``mean``/``std``: the channel
    statistics used for input normalisation; the default 0.5/0.5 maps [0, 1] to [-1, 1] and is stated
    rather than estimated, so results never depend on a hidden pass over the data. Give the real
    statistics if you know them.
    """

    image_size: PositiveInt | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v <= 0 for v in value):
            raise ValueError("every std must be > 0")
        return value


class ImageFolderSource(DatasetSource[ImageFolderConfig]):
    """Images in ``root/train/<class>/`` and ``root/test/<class>/`` (JPEG or PNG), labels = sorted class names.

    Both splits must hold the same class folders, so label ``i`` means the same class in both.
    """

    Config = ImageFolderConfig
    name = "imagefolder"

    def __init__(self, config: ImageFolderConfig, root: Path | None, download: bool):
        super().__init__(config, root, download)
        self._info: DatasetInfo | None = None

    def _root(self) -> Path:
        if self.root is None:
            raise UserError(
                "imagefolder: no data folder configured; set data.root in the recipe to a folder holding train/ and "
                "test/ class folders (or set KDBENCH_DATA_ROOT to a folder holding imagefolder/)"
            )
        if not self.root.is_dir():
            raise UserError(
                f"imagefolder: {self.root} is not a folder; set data.root to a folder holding train/ and test/"
            )
        return self.root

    def _classes(self) -> tuple[str, ...]:
        root = self._root()
        train, test = _class_folders(root / "train"), _class_folders(root / "test")
        if train != test:
            only_train = sorted(set(train) - set(test))
            only_test = sorted(set(test) - set(train))
            detail = "; ".join(
                part
                for part in (
                    f"only in {root / 'train'}: {', '.join(only_train[:5])}" if only_train else "",
                    f"only in {root / 'test'}: {', '.join(only_test[:5])}" if only_test else "",
                )
                if part
            )
            raise UserError(f"imagefolder: train/ and test/ class folders differ ({detail}); make them the same")
        return tuple(train)

    def info(self) -> DatasetInfo:
        if self._info is None:
            cfg = self.config
            classes = self._classes()
            size = cfg.image_size
            if size is None:
                listing = scan_image_folder(self._root() / "train", classes)
                first = decode_image(listing.files[0])
                if first.shape[1] != first.shape[2]:
                    raise UserError(
                        f"imagefolder: {listing.files[0]} is {first.shape[2]}x{first.shape[1]}, not square; "
                        "set image_size in the dataset options to resize all images to a square"
                    )
                size = int(first.shape[1])
            self._info = DatasetInfo(len(classes), size, tuple(cfg.mean), tuple(cfg.std), classes)
        return self._info

    def load(self, split: Split) -> SplitData:
        if split not in SPLITS:
            raise UserError(f"imagefolder: unknown split {split!r}; choose train or test")
        classes = self._classes()
        data, _ = read_image_folder(self._root() / split, classes, self.config.image_size)
        expected = self.info().image_size
        if data.images.shape[2] != expected or data.images.shape[3] != expected:
            raise UserError(
                f"imagefolder: images in {self._root() / split} are {data.images.shape[3]}x{data.images.shape[2]}, "
                f"but train/ images are {expected}x{expected}; set image_size in the dataset options"
            )
        return data

    def fingerprint(self, split: Split) -> str | None:
        root = self._root()
        listing = scan_image_folder(root / split, self._classes())
        config = self.config.model_dump_json()
        where = (root / split).resolve()
        return (
            f"imagefolder v{DECODE_VERSION} split={split} root={where} config={config} {_folder_fingerprint(listing)}"
        )
