"""The on-disk decode cache: a decoded split is stored once as a tensor file keyed by its fingerprint.

Decoding 60,000 JPEGs takes seconds and every run needs the same tensors, so the result is kept
in ``<cache dir>/<sha256 of the source's fingerprint>.pt``. The fingerprint changes whenever the data
or the decode options change, so a stale entry is never read; it is merely left behind (delete the
folder to reclaim space). Files are written atomically with a sha256 sidecar, so concurrent runs and
crashes can leave at worst a stray temporary file (removed the next time the folder is opened, once its
writer is gone), never a truncated entry; an entry that fails its checksum or cannot be read is
re-decoded with a warning. The checksum is computed once when an entry is written and once when it is
read, never per training step.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch

from kdbench.data.base import DatasetSource, Split, SplitData
from kdbench.engine.checkpoint import read_verified, remove_stale_temp_files, write_with_checksum

__all__ = ["CACHE_DIR_ENV", "cache_file", "default_cache_dir", "load_split_cached"]

#: Environment variable that overrides the cache folder.
CACHE_DIR_ENV = "KDBENCH_CACHE_DIR"

#: Bumped when the layout of a cache file changes.
_CACHE_FORMAT = 2  # 2: a .sha256 sidecar per entry


def default_cache_dir() -> Path:
    """``$KDBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdbench``, else ``~/.cache/kdbench``."""
    explicit = os.environ.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "kdbench"
    return Path.home() / ".cache" / "kdbench"


def cache_file(fingerprint: str, cache_dir: Path) -> Path:
    """Where the split with ``fingerprint`` is stored."""
    digest = hashlib.sha256(f"kdbench-cache-v{_CACHE_FORMAT}\n{fingerprint}".encode()).hexdigest()
    return cache_dir / f"{digest}.pt"


def _read(path: Path, fingerprint: str) -> SplitData:
    """Load and validate one cache file; any problem raises (the caller re-decodes).

    The bytes are read once: their sha256 is checked against the sidecar written with them (a
    flipped bit or a zeroed tensor is caught here, not trained on), then the same bytes are unpickled.
    """
    data, problem = read_verified(path)
    if problem is not None:
        raise ValueError(problem)
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != _CACHE_FORMAT or obj.get("fingerprint") != fingerprint:
        raise ValueError("not a kdbench cache file for this data")
    images, labels = obj["images"], obj["labels"]
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise ValueError("missing tensors")
    if images.dtype != torch.uint8 or images.dim() != 4 or labels.dtype != torch.int64 or labels.dim() != 1:
        raise ValueError(
            f"unexpected tensors {images.dtype} {tuple(images.shape)} / {labels.dtype} {tuple(labels.shape)}"
        )
    if len(images) != len(labels):
        raise ValueError("images and labels differ in length")
    return SplitData(images, labels)


def _write(path: Path, fingerprint: str, data: SplitData) -> None:
    """Write atomically with a sha256 sidecar (the training checkpoints' mechanism)."""
    payload = {
        "format": _CACHE_FORMAT,
        "fingerprint": fingerprint,
        # Clones drop any larger storage a view might share (torch.save writes whole storages).
        "images": data.images.detach().cpu().contiguous().clone(),
        "labels": data.labels.detach().cpu().to(torch.int64).contiguous().clone(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_with_checksum(path, buffer.getvalue())


def load_split_cached(source: DatasetSource, split: Split, cache_dir: Path | None = None) -> SplitData:
    """Return ``split`` of ``source``, decoding it only when no valid cache entry exists.

    Sources whose `fingerprint` is None (e.g. synthetic data) are loaded directly. A cache folder
    that cannot be written costs a warning, not the run.
    """
    fingerprint = source.fingerprint(split)
    if fingerprint is None:
        return source.load(split)
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = cache_file(fingerprint, directory)
    remove_stale_temp_files(directory)  # left by a process killed while writing an entry
    if path.exists():
        try:
            return _read(path, fingerprint)
        except Exception as exc:  # corrupt, truncated, foreign or from another torch: decode again
            warnings.warn(
                f"ignoring unreadable data cache file {path} ({type(exc).__name__}: {exc}); decoding again",
                stacklevel=2,
            )
    data = source.load(split)
    try:
        _write(path, fingerprint, data)
    except OSError as exc:
        warnings.warn(
            f"could not write data cache file {path} ({exc}); set {CACHE_DIR_ENV} to a writable folder",
            stacklevel=2,
        )
    return data
