"""A full disk while saving a checkpoint: one-line error naming the intact previous checkpoint, nothing
half-written left behind, and the rerun (with space again) ends exactly like an uninterrupted run.

The disk "fills up" inside the real `atomic_write_bytes`: its ``open`` is replaced (in the checkpoint
module only) by one whose files store half the bytes and then raise ENOSPC, as write(2) does.
"""

from __future__ import annotations

import builtins
import errno
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import kdbench.engine.checkpoint as checkpoint_module
from kdbench.cli import main
from kdbench.engine.checkpoint import CheckpointStore, DiskFullError

from ..conftest import write
from .conftest import TINY_RECIPE, assert_same_run

NO_SPACE = os.strerror(errno.ENOSPC)


class _FullDiskFile:
    """A binary file whose first write stores half of the bytes, then fails with ENOSPC."""

    def __init__(self, fh: Any, name: str):
        self._fh, self.name = fh, name

    def write(self, data: bytes) -> int:
        self._fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, NO_SPACE, self.name)

    def flush(self) -> None:
        self._fh.flush()

    def fileno(self) -> int:
        return int(self._fh.fileno())

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _fill_disk_on(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    """Writes to temporary files whose name starts with ``prefix`` hit a full disk."""
    real_open = builtins.open

    def open_on_full_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(prefix):
            return _FullDiskFile(fh, str(file))
        return fh

    monkeypatch.setattr(checkpoint_module, "open", open_on_full_disk, raising=False)


@pytest.mark.parametrize(
    "prefix",
    [".ckpt-e0002-b000000.pt.tmp-", ".ckpt-e0002-b000000.pt.sha256.tmp-"],
    ids=["checkpoint-write", "sidecar-write"],
)
def test_disk_full_on_a_later_save_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, prefix):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    assert main(["run", str(recipe), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    capsys.readouterr()

    out = tmp_path / "out"
    folder = out / "checkpoints"
    _fill_disk_on(monkeypatch, prefix)
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.strip() == (
        f"kdbench: error: disk full while saving checkpoint {folder / 'ckpt-e0002-b000000.pt'} ({NO_SPACE}); "
        f"the previous checkpoint {folder / 'ckpt-e0001-b000000.pt'} is intact; "
        "free some space and run the same command to resume"
    )
    # Neither the half-written temporary file nor an orphan sidecar is left behind.
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-e0001-b000000.pt", "ckpt-e0001-b000000.pt.sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path, state = CheckpointStore(folder).load_latest()
    assert path.name == "ckpt-e0001-b000000.pt"
    assert state["epoch"] == 1
    assert not (out / "model.pt").exists()

    monkeypatch.delattr(checkpoint_module, "open")  # space again
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    assert_same_run(out, tmp_path / "ref")


def test_disk_full_on_the_first_save_says_there_is_nothing_to_resume(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path / "checkpoints")
    _fill_disk_on(monkeypatch, ".ckpt-")
    with pytest.raises(DiskFullError, match=r"no intact earlier checkpoint exists, so the run would start over"):
        store.save((1, 0), {"w": torch.ones(3)})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_other_write_errors_are_not_reported_as_a_full_disk(tmp_path, monkeypatch):
    def broken(path: Path, data: bytes) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(checkpoint_module, "atomic_write_bytes", broken)
    with pytest.raises(OSError, match="Input/output error") as info:
        CheckpointStore(tmp_path).save((1, 0), {"w": torch.ones(3)})
    assert not isinstance(info.value, DiskFullError)
