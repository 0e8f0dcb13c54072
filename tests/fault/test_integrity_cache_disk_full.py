"""A full disk while writing the decode cache costs a warning, never the run (as the cache promises).

The cache folder is a real, tiny filesystem (a 64 KiB tmpfs, mounted for the test; skipped where
mounting is not allowed), so the kernel itself answers ENOSPC, as a full disk does. torch.save used
to stream into the file and fail with a RuntimeError from its zip writer, which crashed the run.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kdbench.data.cache import load_split_cached
from kdbench.data.sources import FakeSource


class _Fingerprinted(FakeSource):
    def fingerprint(self, split):  # type: ignore[no-untyped-def]
        return f"fake-disk-full {split}"


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:80]})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_while_writing_the_cache_is_a_warning(full_disk):
    source = _Fingerprinted(FakeSource.Config(train_size=256, test_size=16, image_size=16), None, False)
    with pytest.warns(UserWarning, match=r"could not write data cache file .*No space left on device"):
        data = load_split_cached(source, "train", full_disk)
    assert torch.equal(data.images, source.load("train").images)
    assert list(full_disk.iterdir()) == []  # no half-written entry or temporary file left
    with warnings.catch_warnings(record=True):
        again = load_split_cached(source, "train", full_disk)  # still no room: decoded again, no crash
    assert torch.equal(again.images, data.images)
