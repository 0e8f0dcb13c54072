"""Run the kdbench command line, SIGKILLing the process inside the Nth checkpoint-store write.

    python kill_in_save.py N MODE kdbench-args...

Test helper for tests/fault/test_sigkill.py (not a test module, and not imported by kdbench): it
patches ``kdbench.engine.checkpoint.atomic_write_bytes``, which `CheckpointStore.save` calls twice
per checkpoint (call 2k-1 writes the k-th sidecar, call 2k the k-th checkpoint; writes of other files
are not counted), so the core carries no test hook. On the Nth call the process kills itself with
SIGKILL (no cleanup, no handlers run):

* ``tmp``: half the bytes are in the temporary file, as a crash in the middle of the real write
  leaves them (the final name is untouched);
* ``between``: before the write starts (for a checkpoint: after its sidecar was written);
* ``torn``: half the bytes at the final name, what a filesystem without atomic rename could leave;
  the checksum must reject it;
* ``after``: right after the write completed (for a checkpoint: before metrics.jsonl is rewritten).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import kdbench.engine.checkpoint as checkpoint
from kdbench.cli import main

MODES = ("tmp", "between", "torn", "after")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(kill_at: int, mode: str) -> None:
    real = checkpoint.atomic_write_bytes
    calls = {"n": 0}

    def write(path: Path, data: bytes) -> None:
        # Modules imported after the patch (kdbench.run, the trainer) bind this function too: count the
        # checkpoint store's writes only.
        if not path.name.startswith("ckpt-"):
            real(path, data)
            return
        calls["n"] += 1
        if calls["n"] != kill_at:
            real(path, data)
            return
        if mode == "between":
            _die()
        if mode == "after":
            real(path, data)
            _die()
        # the same temporary name the real function uses
        target = path.with_name(f".{path.name}.tmp-{os.getpid()}") if mode == "tmp" else path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        _die()

    checkpoint.atomic_write_bytes = write


if __name__ == "__main__":
    kill_at, mode, *argv = sys.argv[1:]
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {MODES}")
    _install(int(kill_at), mode)
    raise SystemExit(main(argv))
