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
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

from kdbench._errors import UserError

__all__ = [
    "CHECKSUM_SUFFIX",
    "MAX_WEIGHTS_BYTES_ENV",
    "CheckpointStore",
    "DiskFullError",
    "atomic_write_bytes",
    "checksum_path",
    "load_weights_file",
    "load_weights_only",
    "max_weights_bytes",
    "read_regular_file",
    "read_verified",
    "remove_stale_temp_files",
    "verify_checksum",
    "write_with_checksum",
]

#: The sidecar of ``file.pt`` is ``file.pt.sha256``: the hex sha256 of the file's bytes.
CHECKSUM_SUFFIX = ".sha256"

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


def checksum_path(path: Path) -> Path:
    """The sidecar holding ``path``'s sha256 (``model.pt`` -> ``model.pt.sha256``)."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_with_checksum(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with its sha256 sidecar, the sidecar first.

    A crash between the two writes leaves a sidecar without its file (ignored) or, when an older file
    is being replaced, an old file with the new sidecar (which fails its check and is never trusted):
    never a file that passes a check it should fail.
    """
    sidecar = checksum_path(path)
    atomic_write_bytes(sidecar, hashlib.sha256(data).hexdigest().encode())
    try:
        atomic_write_bytes(path, data)
    except BaseException:
        if not path.exists():  # an orphan sidecar would be ignored anyway; keep the folder tidy
            with contextlib.suppress(OSError):
                sidecar.unlink()
        raise


def verify_checksum(path: Path, data: bytes | None = None) -> str | None:
    """None when ``path`` (or ``data``, its bytes already read) matches its sidecar, else the problem.

    The problem reads after the file name: ``"has no checksum file"``, ``"fails its checksum ..."``.
    """
    try:
        expected = checksum_path(path).read_text().strip()
    except OSError:
        return "has no checksum file"
    try:
        content = path.read_bytes() if data is None else data
    except OSError as exc:
        return f"is unreadable ({exc.strerror})"
    actual = hashlib.sha256(content).hexdigest()
    return None if actual == expected else "fails its checksum (truncated or corrupted)"


def read_verified(path: Path, *, max_bytes: int | None = None, what: str = "file") -> tuple[bytes, str | None]:
    """The bytes of ``path`` (a regular file, read once) and the checksum problem (None when intact).

    ``max_bytes`` bounds what is read: a larger file raises `UserError` before any byte is read.
    """
    data = read_regular_file(path, max_bytes=max_bytes, what=what)
    return data, verify_checksum(path, data)


def read_regular_file(path: Path, *, max_bytes: int | None = None, what: str = "file") -> bytes:
    """Read ``path`` only if it is a regular file no larger than ``max_bytes`` (checked before reading).

    A FIFO would block forever, /dev/zero would fill the memory and a directory cannot be read: each is
    a one-line `UserError` naming the path, raised without reading a byte.
    """
    name = f"{what} {path}".strip()
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"{name}: {exc.strerror or 'cannot be read'}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise UserError(f"{name} is {kind}; give the path of a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(
            f"{name} is {st.st_size / 2**30:.1f} GiB, above the {max_bytes / 2**30:.1f} GiB kdbench reads "
            "for such a file; check the path"
        )
    with open(path, "rb") as fh:
        return fh.read() if max_bytes is None else fh.read(max_bytes + 1)


#: Temporary files of interrupted writes: ``.NAME.tmp-PID`` (atomic_write_bytes) and ``.NAME-PID-XXXX.tmp``.
_TEMP = re.compile(r"^\..+\.tmp-(\d+)$|^\..+-(\d+)-[^-]+\.tmp$")


def _process_started_ns(pid: int) -> int | None:
    """When process ``pid`` started (ns since the epoch), or None when no such process runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process: it exists
        pass
    try:
        # Field 22 of /proc/PID/stat: start time in clock ticks since boot (after the parenthesised name).
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        # btime has one-second resolution: back off a second so a file written at start-up is never stale.
        return (boot - 1) * 10**9 + ticks * 10**9 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0  # alive, start unknown (no /proc): treat every file of it as possibly in use


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder``; returns those removed.

    A temporary file names the process that writes it. It is stale when that process no longer runs,
    or when the process now holding that id started after the file was last written (the id was
    reused). Files of live writers are left alone, so concurrent runs sharing a folder are safe.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1) or match.group(2))
        started = _process_started_ns(pid)
        try:
            stale = started is None or (pid != os.getpid() and entry.stat().st_mtime_ns < started)
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


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


#: Largest weights file kdbench reads (bytes); override with KDBENCH_MAX_WEIGHTS_BYTES. 16 GiB holds
#: any CIFAR/ImageNet model kdbench trains (WRN-70-16 is about 1 GiB in float32).
MAX_WEIGHTS_BYTES_ENV = "KDBENCH_MAX_WEIGHTS_BYTES"
_DEFAULT_MAX_WEIGHTS_BYTES = 16 * 2**30


def max_weights_bytes() -> int:
    """The largest weights file kdbench reads: ``$KDBENCH_MAX_WEIGHTS_BYTES``, else 16 GiB."""
    text = os.environ.get(MAX_WEIGHTS_BYTES_ENV, "").strip()
    try:
        return int(text) if text else _DEFAULT_MAX_WEIGHTS_BYTES
    except ValueError:
        raise UserError(f"{MAX_WEIGHTS_BYTES_ENV}={text!r} is not a number of bytes") from None


def load_weights_file(path: Path, *, what: str = "weights file", map_location: str | torch.device = "cpu") -> Any:
    """Load a weights file that kdbench may trust: every problem is a one-line `UserError`.

    Only a regular file below `max_weights_bytes` is read (no FIFO, device, directory or huge sparse
    file ever reaches ``torch.load``). A file with a ``.sha256`` sidecar (every weights file kdbench
    writes) must match it; a file without one (weights from elsewhere) is loaded as it is. Loading is
    ``weights_only``: a pickle that would run code is refused.
    """
    data, problem = read_verified(path, max_bytes=max_weights_bytes(), what=what)
    name = f"{what} {path}".strip()
    if problem is not None and problem != "has no checksum file":
        raise UserError(
            f"{name} {problem}; kdbench does not use a damaged file: rebuild it (run its recipe "
            "again: a run rebuilds model.pt from its last good checkpoint) or restore it from a backup"
        )
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{name} cannot be loaded safely ({type(exc).__name__}); "
            "kdbench reads only weights (torch.load weights_only=True)"
        ) from None


class CheckpointStore:
    """``checkpoints/ckpt-eEEEE-bBBBBBB.pt`` (+ ``.sha256``), keeping the newest ``keep`` of them.

    A position ``(epoch, batch)`` counts completed epochs and the batches done in the next one; the
    checkpoint at the end of epoch e is ``(e, 0)``; one written on a signal mid-epoch has batch > 0.
    """

    def __init__(self, folder: Path, keep: int = 2, owner: dict[str, str] | None = None):
        """``owner`` (e.g. the recipe hash and the model name) is stored in every checkpoint, and a
        checkpoint whose owner differs (one copied from another run) is refused when loading."""
        self.folder = folder
        self.keep = keep
        self.owner = dict(owner) if owner else None

    def path(self, position: tuple[int, int]) -> Path:
        return self.folder / f"ckpt-e{position[0]:04d}-b{position[1]:06d}.pt"

    def save(self, position: tuple[int, int], state: dict[str, Any]) -> Path:
        """Serialise ``state`` as the checkpoint at ``position``."""
        buffer = io.BytesIO()
        torch.save({**state, "owner": self.owner} if self.owner else state, buffer)
        data = buffer.getvalue()
        path = self.path(position)
        sidecar = checksum_path(path)
        try:
            write_with_checksum(path, data)
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
        remove_stale_temp_files(self.folder)
        for position in self.positions():
            path = self.path(position)
            problem = self._verify(path)
            if problem is None:
                try:
                    state = load_weights_only(path, map_location)
                except Exception as exc:  # weights_only refusal or unreadable: treat as damaged
                    problem = f"cannot be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                else:
                    problem = self._foreign(state)
                    if problem is None:
                        return path, state
            warnings.warn(f"checkpoint {path} {problem}; falling back to the previous one", stacklevel=2)
        return None

    def _foreign(self, state: Any) -> str | None:
        """Why ``state`` belongs to another run (its owner differs from this store's), else None."""
        if self.owner is None:
            return None
        found = state.get("owner") if isinstance(state, dict) else None
        if not isinstance(found, dict):
            return "records no run (written by an older kdbench), so it is not trusted"
        differ = [f"{k} {found.get(k)!r} instead of {v!r}" for k, v in self.owner.items() if found.get(k) != v]
        return f"belongs to another run ({'; '.join(differ)})" if differ else None

    def _verify(self, path: Path) -> str | None:
        return verify_checksum(path)

    def _prune(self) -> None:
        for position in self.positions()[self.keep :]:
            for p in (self.path(position), checksum_path(self.path(position))):
                with contextlib.suppress(OSError):
                    p.unlink()
