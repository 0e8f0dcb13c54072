"""The built-in dataset sources, one module each; this module names them all in one place.

- `kdbench.data.standard`: CIFAR-10, CIFAR-100, STL-10 (torchvision's files or an ImageFolder copy);
- `kdbench.data.image_folder`: any ImageFolder tree (the ``imagefolder`` dataset) and the scanning
  and fingerprinting every folder tree goes through;
- `kdbench.data.decode`: image files to one ``uint8 (N, 3, H, W)`` tensor;
- `kdbench.data.fake`: synthetic data for tests.

Every source decodes a whole split into ``uint8 (N, C, H, W)`` once; the decode cache
(kdbench.data.cache) keeps the result on disk, so the cost is paid once per data change.
"""

from __future__ import annotations

from kdbench.data.decode import IMAGE_EXTENSIONS, decode_images, decoder_name
from kdbench.data.fake import FakeConfig, FakeSource
from kdbench.data.image_folder import (
    ImageFolderConfig,
    ImageFolderSource,
    ImageFolderSplit,
    read_image_folder,
    scan_image_folder,
)
from kdbench.data.standard import CIFAR10, CIFAR100, STL10, STL10Config

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "IMAGE_EXTENSIONS",
    "STL10",
    "FakeConfig",
    "FakeSource",
    "ImageFolderConfig",
    "ImageFolderSource",
    "ImageFolderSplit",
    "STL10Config",
    "decode_images",
    "decoder_name",
    "read_image_folder",
    "scan_image_folder",
]
