"""Evaluation progress on disk: the per-example outcomes of every finished (attack, chunk), so that a
killed evaluation resumes at the chunk it reached.

An evaluation is a sequence of chunks of examples (`kdbench.evaluation.sharding`); each attack runs
each chunk from its own seed, so a chunk's outcomes do not depend on which chunks ran before, in
which process, or in which attempt. After an attack finishes a chunk, its outcomes (a bool per
example: robust and clean) and AutoAttack's flags for it are written to::

    <folder>/<key>/<attack>-c<chunk:05d>.pt   (+ .sha256)

atomically, with a checksum sidecar (`kdbench.engine.checkpoint.write_with_checksum`). ``key`` is a
digest of everything the outcomes depend on (`progress_key`): the model's tensors, the images and
labels, the attack settings (eps, norm, step size, batch size, seed, chunk size) and the versions of
kdbench, torch and pyautoattack and the device type. Files of another key are stale (another model,
other settings) and are never read: `EvalProgressStore.open` removes them. A file that fails its
checksum, or whose recorded key, chunk bounds or shape disagree, is ignored and recomputed.

Only rank 0 of a data-parallel evaluation reads and writes the store (the other processes receive
what it read; see `kdbench.evaluation.sharding`), so the folder need not be shared between nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.engine.checkpoint import read_verified, write_with_checksum

__all__ = ["ChunkOutcome", "EvalProgressStore", "progress_key", "progress_store_for"]

#: Bumped when the file layout or what a key covers changes (older progress is then stale).
FORMAT = 1
#: Hex digits of the key in the folder name (the full key is checked inside every file).
KEY_DIGITS = 16
#: A chunk file holds a bool per example and a few flag lines: anything much larger is not one of ours.
MAX_CHUNK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ChunkOutcome:
    """What one attack found on one chunk: ``correct: (stop - start,)`` bool (CPU), AutoAttack's flags."""

    correct: Tensor
    flags: tuple[str, ...] = ()


def _digest_tensors(h: Any, tensors: list[tuple[str, Tensor]]) -> None:
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def progress_key(model: nn.Module, images: Tensor, labels: Tensor, settings: dict[str, Any]) -> str:
    """sha256 of the model's state_dict, the images and labels, ``settings`` (JSON) and the versions.

    ``settings`` must hold every evaluation option the outcomes depend on (eps, norm, step size,
    batch size, seed, chunk size, device type); the versions of kdbench, torch and pyautoattack are
    added here, since another implementation of an attack may find other adversarial examples.
    """
    h = hashlib.sha256(f"kdbench-eval-progress-{FORMAT}|".encode())
    _digest_tensors(h, sorted(model.state_dict().items()))
    _digest_tensors(h, [("images", images), ("labels", labels)])
    versions = {name: _version(name) for name in ("kdbench", "torch", "pyautoattack")}
    h.update(json.dumps({"settings": settings, "versions": versions}, sort_keys=True, default=str).encode())
    return h.hexdigest()


class EvalProgressStore:
    """The chunk files of one evaluation (one key) under ``folder``; see the module docstring."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.key: str | None = None

    @property
    def path(self) -> Path:
        if self.key is None:
            raise RuntimeError("EvalProgressStore.open() first")
        return self.folder / self.key[:KEY_DIGITS]

    def open(self, key: str) -> None:
        """Use the progress of ``key``, removing that of every other key (stale: other model or settings)."""
        self.key = key
        if self.folder.is_dir():
            for child in self.folder.iterdir():
                if child.is_dir() and child.name != key[:KEY_DIGITS]:
                    shutil.rmtree(child, ignore_errors=True)

    def _file(self, attack: str, chunk: int) -> Path:
        return self.path / f"{attack}-c{chunk:05d}.pt"

    def save(self, attack: str, chunk: int, start: int, stop: int, outcome: ChunkOutcome) -> None:
        """Write one chunk's outcomes atomically, with the key and bounds they belong to."""
        buffer = io.BytesIO()
        record = {
            "format": FORMAT,
            "key": self.key,
            "attack": attack,
            "chunk": chunk,
            "start": start,
            "stop": stop,
            "correct": outcome.correct.detach().cpu().to(torch.bool),
            "flags": list(outcome.flags),
        }
        torch.save(record, buffer)
        write_with_checksum(self._file(attack, chunk), buffer.getvalue())

    def load(self, attack: str, chunk: int, start: int, stop: int) -> ChunkOutcome | None:
        """The stored outcomes of (``attack``, ``chunk``), or None when absent, damaged or not this key's."""
        path = self._file(attack, chunk)
        if not path.is_file():
            return None
        try:
            data, problem = read_verified(path, max_bytes=MAX_CHUNK_BYTES, what="evaluation progress file")
            if problem is not None:
                return None
            record = torch.load(io.BytesIO(data), weights_only=True)
        except Exception:  # unreadable or not a torch file: recompute this chunk, never trust it
            return None
        if not isinstance(record, dict):
            return None
        expected = {"format": FORMAT, "key": self.key, "attack": attack, "chunk": chunk, "start": start, "stop": stop}
        if any(record.get(k) != v for k, v in expected.items()):
            return None
        correct, flags = record.get("correct"), record.get("flags")
        if not isinstance(correct, Tensor) or correct.dtype != torch.bool or correct.shape != (stop - start,):
            return None
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            return None
        return ChunkOutcome(correct, tuple(flags))

    def clear(self) -> None:
        """Remove every progress file (the evaluation finished and its result is written)."""
        with contextlib.suppress(OSError):
            shutil.rmtree(self.folder)


def progress_store_for(result_file: Path) -> EvalProgressStore:
    """The progress folder of the evaluation that writes ``result_file``: ``eval.json`` -> ``eval.progress/``."""
    return EvalProgressStore(result_file.with_name(result_file.stem + ".progress"))
