"""A label fix in an ImageFolder tree always invalidates the decode cache.

Moving images between class folders while keeping their names, their sizes and the newest mtime
(``mv`` keeps mtimes) used to leave the fingerprint unchanged: the run trained on the old labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdbench.data.cache import load_split_cached
from kdbench.data.sources import ImageFolderSource

MTIME_NS = 1_700_000_000_000_000_000


def _tree(root: Path) -> None:
    """train/ and test/ with classes a and b, each holding 0.png and 1.png of equal byte size and mtime."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for name in ("0.png", "1.png"):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name, compress_level=0)  # stored: equal sizes
                os.utime(folder / name, ns=(MTIME_NS, MTIME_NS))


def _swap(first: Path, second: Path) -> None:
    """Swap two files the way a user fixing labels would: mv a x; mv b a; mv x b (mtimes kept)."""
    parked = first.with_name(".parked")
    os.rename(first, parked)
    os.rename(second, first)
    os.rename(parked, second)


def test_swapping_images_between_class_folders_invalidates_the_cache(tmp_path):
    root = tmp_path / "data"
    _tree(root)
    source = ImageFolderSource(ImageFolderSource.Config(), root, False)
    cache = tmp_path / "cache"
    before = load_split_cached(source, "train", cache)
    a0, b0 = root / "train" / "a" / "0.png", root / "train" / "b" / "0.png"
    assert a0.stat().st_size == b0.stat().st_size  # the old fingerprint cannot tell them apart
    _swap(a0, b0)

    after = load_split_cached(ImageFolderSource(ImageFolderSource.Config(), root, False), "train", cache)
    fresh = ImageFolderSource(ImageFolderSource.Config(), root, False).load("train")
    assert torch.equal(after.images, fresh.images)  # what the folder holds now, not the cached decode
    assert not torch.equal(after.images, before.images)
    assert len(list(cache.glob("*.pt"))) == 2


def test_rewriting_one_image_with_the_same_size_and_newest_mtime_invalidates_the_cache(tmp_path):
    root = tmp_path / "data"
    _tree(root)
    cache = tmp_path / "cache"
    load_split_cached(ImageFolderSource(ImageFolderSource.Config(), root, False), "train", cache)
    target = root / "train" / "a" / "1.png"
    size = target.stat().st_size
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(target, compress_level=0)  # a fixed image
    assert target.stat().st_size == size
    os.utime(target, ns=(MTIME_NS - 10**9, MTIME_NS - 10**9))  # older than the newest file: aggregate unchanged

    after = load_split_cached(ImageFolderSource(ImageFolderSource.Config(), root, False), "train", cache)
    assert int(after.images[1].sum()) == 0
