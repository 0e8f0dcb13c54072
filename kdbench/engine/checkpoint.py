"""Crash-safe checkpoints: atomic writes, checksums, weights_only loading, fallback to the previous one.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed
over its final name (``os.replace`` is atomic on POSIX), and the folder is fsynced so the rename
survives a power cut. A sidecar ``.sha256`` holds the checksum of the bytes; a checkpoint whose bytes
do not match (truncated, bit-flipped) is skipped with a warning and the previous one is used.
Checkpoints are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
A full disk while saving is a `DiskFullError` (a one-line user error) that names the previous
checkpoint, which the failed save never touched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from kdbench._errors import UserError

__all__ = ["CheckpointStore", "DiskFullError", "atomic_write_bytes", "load_weights_only"]

_NAME = re.compile(r"^ckpt-e(\d+)-b(\d+)\.pt$")

#: errno values that mean "no room to write": a full disk, or a user's disk quota.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(UserError):
    """The disk filled up while a checkpoint was saved; the earlier checkpoints are untouched."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_weights_only(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` restricted to tensors and plain containers (never unpickles code)."""
    return torch.load(path, map_location=map_location, weights_only=True)


class CheckpointStore:
    """``checkpoints/ckpt-eEEEE-bBBBBBB.pt`` (+ ``.sha256``), keeping the newest ``keep`` of them.

    A position ``(epoch, batch)`` counts completed epochs and the batches done in the next one; the
    checkpoint at the end of epoch e is ``(e, 0)``; one written on a signal mid-epoch has batch > 0.
    """

    def __init__(self, folder: Path, keep: int = 2):
        self.folder = folder
        self.keep = keep

    def path(self, position: tuple[int, int]) -> Path:
        return self.folder / f"ckpt-e{position[0]:04d}-b{position[1]:06d}.pt"

    def save(self, position: tuple[int, int], state: dict[str, Any]) -> Path:
        """Serialise ``state`` as the checkpoint at ``position``."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        path = self.path(position)
        sidecar = path.with_suffix(".pt.sha256")
        try:
            # Checksum first: a crash between the two writes leaves a sidecar without its checkpoint,
            # which is ignored, never a checkpoint with a stale sidecar.
            atomic_write_bytes(sidecar, hashlib.sha256(data).hexdigest().encode())
            atomic_write_bytes(path, data)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            if not path.exists():  # the orphan sidecar would be ignored anyway; keep the folder tidy
                with contextlib.suppress(OSError):
                    sidecar.unlink()
            raise DiskFullError(self._disk_full_message(path, exc)) from None
        self._prune()
        return path

    def _disk_full_message(self, path: Path, exc: OSError) -> str:
        intact = next(
            (self.path(p) for p in self.positions() if self.path(p) != path and self._verify(self.path(p)) is None),
            None,
        )
        previous = (
            f"the previous checkpoint {intact} is intact; free some space and run the same command to resume"
            if intact is not None
            else "no intact earlier checkpoint exists, so the run would start over; free some space and run it again"
        )
        return f"disk full while saving checkpoint {path} ({exc.strerror or 'no space left'}); {previous}"

    def positions(self) -> list[tuple[int, int]]:
        """Positions with a checkpoint file, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), int(m.group(2))) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found, reverse=True)

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that passes its checksum and loads; warns about each one skipped.

        Temporary files of writes that a crash interrupted are removed first (the run folder is locked,
        so no other process is writing them).
        """
        if self.folder.is_dir():
            for stale in self.folder.glob(".*.tmp-*"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        for position in self.positions():
            path = self.path(position)
            problem = self._verify(path)
            if problem is None:
                try:
                    return path, load_weights_only(path, map_location)
                except Exception as exc:  # weights_only refusal or unreadable: treat as damaged
                    problem = f"cannot be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            warnings.warn(f"checkpoint {path} {problem}; falling back to the previous one", stacklevel=2)
        return None

    def _verify(self, path: Path) -> str | None:
        sidecar = path.with_suffix(".pt.sha256")
        try:
            expected = sidecar.read_text().strip()
        except OSError:
            return "has no checksum file"
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            return f"is unreadable ({exc.strerror})"
        return None if actual == expected else "fails its checksum (truncated or corrupted)"

    def _prune(self) -> None:
        for position in self.positions()[self.keep :]:
            for p in (self.path(position), self.path(position).with_suffix(".pt.sha256")):
                with contextlib.suppress(OSError):
                    p.unlink()
