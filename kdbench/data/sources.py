"""The built-in dataset sources: CIFAR-10, CIFAR-100, STL-10, any ImageFolder tree, and synthetic data.

Every source decodes a whole split into ``uint8 (N, C, H, W)`` once; the decode cache
(kdbench.data.cache) keeps the result on disk, so the cost below is paid once per data change.

The CIFAR and STL sources accept two layouts in their folder (``root``):

* torchvision's files (``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``), read
  straight from their arrays (no per-image PIL loop), and fetched by torchvision when the recipe
  allows ``data.download``;
* an ImageFolder tree ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, e.g. the offline JPEG copy
  of CIFAR-10. Class folders must carry the standard class names; labels follow the standard order
  (which for all three datasets is the alphabetical order of the names).

Folder trees are decoded with torchvision's native decoders in a thread pool (the decoders release
the GIL), into one preallocated tensor.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import Tensor

from kdbench._errors import UserError
from kdbench.config import ConfigT, EmptyConfig, StrictModel
from kdbench.data.base import DatasetInfo, DatasetSource, Split, SplitData

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "IMAGE_EXTENSIONS",
    "STL10",
    "FakeSource",
    "ImageFolderSource",
    "ImageFolderSplit",
    "decode_images",
    "decoder_name",
    "read_image_folder",
    "scan_image_folder",
]

#: File name endings decoded from ImageFolder trees (case-insensitive); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: Bumped when the decoded content for the same files would change (part of every fingerprint).
_DECODE_VERSION = 2  # 2: 16-bit images scaled to 8 bits (1 kept the low byte)

_SPLITS: tuple[Split, ...] = ("train", "test")

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


# --------------------------------------------------------------------------------------------------
# ImageFolder trees
# --------------------------------------------------------------------------------------------------


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


def _num_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


@functools.cache
def _torchvision_decoder_available() -> bool:
    try:
        from torchvision.io import image as tv_image

        return bool(tv_image._has_image_ops()) and hasattr(tv_image, "decode_image")
    except Exception:  # removed in a future torchvision, or its image extension failed to load
        return False


def decoder_name() -> str:
    """The image decoder in use, with its version; part of every folder fingerprint.

    torchvision's libjpeg decoder is used while it exists (its C++ decode releases the GIL, so threads
    scale); Pillow is the fallback (torchvision deprecated its image I/O in 0.29). JPEG decoders may
    differ by a grey level here and there, so a change of decoder must invalidate cached splits.
    """
    if _torchvision_decoder_available():
        import torchvision

        return f"torchvision-{torchvision.__version__}"
    import PIL

    return f"pillow-{PIL.__version__}"


@contextlib.contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    """Silence torchvision's per-call deprecation warning of its image I/O (one per image otherwise).

    Warning filters are process-global, so the filter also covers the decode threads while the
    calling thread waits inside this block.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The image decoding and encoding capabilities of TorchVision")
        yield


def _decode_torchvision(path: Path) -> Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    # mode=RGB converts grayscale, palette and alpha images to 3 channels.
    image: Tensor = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    return image


#: Pillow modes holding more than 8 bits per sample (16-bit greyscale PNGs open as one of these).
_PILLOW_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _decode_pillow(path: Path) -> Tensor:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in _PILLOW_WIDE_MODES:
            # convert("RGB") would clip these to 255; scale the 16-bit range instead.
            wide = torch.from_numpy(np.asarray(image).astype(np.int32).clip(0, 65535))
            return to_uint8_rgb(wide[None], path)
        if image.mode == "F":
            raise UserError(f"{path}: floating-point image (mode F); save it as an 8- or 16-bit PNG or JPEG")
        rgb = image.convert("RGB") if image.mode != "RGB" else image  # grey, palette, CMYK, alpha (dropped)
        array = np.asarray(rgb)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def to_uint8_rgb(image: Tensor, path: Path) -> Tensor:
    """``(C, H, W)`` of any integer depth -> ``uint8 (3, H, W)``; grey is repeated, alpha dropped.

    16-bit samples map to 8 bits by rounding ``v * 255 / 65535`` (the nearest 8-bit level), never by
    keeping the low byte, which would turn a smooth 16-bit image into noise.
    """
    if image.dtype != torch.uint8:
        if image.dtype.is_floating_point or image.dtype == torch.bool:
            raise UserError(f"{path}: decoded to {image.dtype} samples; save it as an 8- or 16-bit PNG or JPEG")
        image = ((image.to(torch.int64).clamp(0, 65535) * 255 + 32767) // 65535).to(torch.uint8)
    channels = image.shape[0]
    if channels in (1, 2):  # grey (+ alpha)
        image = image[:1].expand(3, -1, -1).contiguous()
    elif channels == 4:  # RGBA: drop alpha, as torchvision's RGB mode and Pillow's convert("RGB") do
        image = image[:3].contiguous()
    elif channels != 3:
        raise UserError(f"{path}: image with {channels} channels; save it as RGB or greyscale")
    return image


def _backend() -> str:
    return "torchvision" if _torchvision_decoder_available() else "pillow"


def _decode_one(path: Path, backend: str) -> Tensor:
    """Decode one image file to ``uint8 (3, H, W)``; a broken file is a UserError naming it.

    Callers wrap the torchvision backend in `_quiet_torchvision_io` once, in the calling thread:
    ``warnings.catch_warnings`` is not thread-safe, so it must never be entered by the decode threads.
    """
    try:
        image = _decode_torchvision(path) if backend == "torchvision" else _decode_pillow(path)
        return to_uint8_rgb(image, path)  # torchvision returns 16-bit PNGs as uint16
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot decode image ({reason}); replace or delete the file") from None


def _resize(image: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of one ``uint8 (C, H, W)`` image (or a batch) to ``size x size``."""
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if image.dim() == 4 else out[0]


def decode_images(files: Sequence[Path], image_size: int | None = None, num_workers: int | None = None) -> Tensor:
    """Decode JPEG/PNG ``files`` into one ``uint8 (N, 3, H, W)`` tensor, in order, with a thread pool.

    Any mode and bit depth (grey, palette, CMYK, alpha, 16-bit) becomes 8-bit RGB; alpha is dropped.
    With ``image_size`` every image is resized to ``image_size x image_size`` (antialiased bilinear);
    without it all images must already share the first image's size. Images are written into a
    preallocated tensor so the peak memory is the result plus one chunk per thread.
    """
    if not files:
        raise UserError("no images to decode")
    backend = _backend()
    with _quiet_torchvision_io():
        return _decode_all(files, image_size, num_workers, backend)


def _decode_all(files: Sequence[Path], image_size: int | None, num_workers: int | None, backend: str) -> Tensor:
    first = _decode_one(files[0], backend)
    if image_size is not None and tuple(first.shape[1:]) != (image_size, image_size):
        first = _resize(first, image_size)
    height, width = first.shape[1:]
    out = torch.empty((len(files), 3, height, width), dtype=torch.uint8)
    out[0] = first

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            image = _decode_one(files[i], backend)
            if tuple(image.shape[1:]) != (height, width):
                if image_size is None:
                    raise UserError(
                        f"{files[i]}: image is {image.shape[2]}x{image.shape[1]} but {files[0]} is {width}x{height}; "
                        "set image_size in the dataset options to resize all images to one size"
                    )
                image = _resize(image, image_size)
            out[i] = image

    workers = num_workers or _num_workers()
    chunk = max(64, -(-(len(files) - 1) // (workers * 8)))
    bounds = [(lo, min(lo + chunk, len(files))) for lo in range(1, len(files), chunk)]
    if workers == 1 or len(bounds) <= 1:
        for lo, hi in bounds:
            work(lo, hi)
        return out
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kdbench-decode") as pool:
        futures = [pool.submit(work, lo, hi) for lo, hi in bounds]
        for future in futures:
            future.result()  # re-raises the first error (e.g. a UserError naming the bad file)
    return out


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


def _files_fingerprint(paths: Sequence[Path]) -> str:
    parts = []
    for path in sorted(paths):
        st = path.stat()
        parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}")
    return " ".join(parts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 / STL-10
# --------------------------------------------------------------------------------------------------


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
        if split not in _SPLITS:
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
        return f"{self.name} v{_DECODE_VERSION} split={split} layout={layout} root={where} config={config} {files}"


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
        return all((folder / f"{split}_{kind}.bin").is_file() for split in _SPLITS for kind in ("X", "y"))

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


# --------------------------------------------------------------------------------------------------
# Any ImageFolder tree
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
                with _quiet_torchvision_io():
                    first = _decode_one(listing.files[0], _backend())
                if first.shape[1] != first.shape[2]:
                    raise UserError(
                        f"imagefolder: {listing.files[0]} is {first.shape[2]}x{first.shape[1]}, not square; "
                        "set image_size in the dataset options to resize all images to a square"
                    )
                size = int(first.shape[1])
            self._info = DatasetInfo(len(classes), size, tuple(cfg.mean), tuple(cfg.std), classes)
        return self._info

    def load(self, split: Split) -> SplitData:
        if split not in _SPLITS:
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
            f"imagefolder v{_DECODE_VERSION} split={split} root={where} config={config} {_folder_fingerprint(listing)}"
        )


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------


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
        if split not in _SPLITS:
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
