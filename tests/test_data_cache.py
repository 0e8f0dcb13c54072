"""Tests of the decode cache: round trip, corrupt files, sources without a fingerprint, the cache folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from kdbench.data.base import DatasetSource, Split, SplitData
from kdbench.data.cache import cache_file, default_cache_dir, load_split_cached
from kdbench.data.sources import FakeSource


def fake(**options: int) -> FakeSource:
    return FakeSource(FakeSource.Config(**options), None, False)


# --------------------------------------------------------------------------------------------------
# decode cache
# --------------------------------------------------------------------------------------------------


class CountingSource(DatasetSource):
    """A fake source with a fingerprint, counting how often it decodes."""

    def __init__(self, tag: str = "a"):
        super().__init__(FakeSource.Config(), None, False)
        self.inner = fake(train_size=64, test_size=32)
        self.loads = 0
        self.tag = tag

    def load(self, split: Split) -> SplitData:
        self.loads += 1
        return self.inner.load(split)

    def fingerprint(self, split: Split) -> str | None:
        return f"counting {self.tag} {split}"


def test_cache_round_trip_and_hit(tmp_path: Path) -> None:
    src = CountingSource()
    first = load_split_cached(src, "train", tmp_path)
    assert src.loads == 1
    assert cache_file("counting a train", tmp_path).is_file()
    second = load_split_cached(src, "train", tmp_path)
    assert src.loads == 1
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    load_split_cached(src, "test", tmp_path)
    load_split_cached(CountingSource("b"), "train", tmp_path)  # another fingerprint: another file
    assert src.loads == 2
    assert len(list(tmp_path.glob("*.pt"))) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_cache_file_is_redecoded_with_a_warning(tmp_path: Path) -> None:
    src = CountingSource()
    load_split_cached(src, "train", tmp_path)
    path = cache_file("counting a train", tmp_path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="unreadable data cache"):
        data = load_split_cached(src, "train", tmp_path)
    assert src.loads == 2
    assert torch.equal(data.images, src.inner.load("train").images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_split_cached(src, "train", tmp_path)  # rewritten: a clean hit again
    assert src.loads == 2


def test_source_without_fingerprint_is_not_cached(tmp_path: Path) -> None:
    data = load_split_cached(fake(), "test", tmp_path)
    assert data.images.shape == (256, 3, 32, 32)
    assert not list(tmp_path.iterdir())


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("KDBENCH_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "kdbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "kdbench"
