"""Paths kdbench reads that are not ordinary files are refused fast, with bounded memory, in one line.

teacher.checkpoint (and the recipe itself) pointing at /dev/zero, a FIFO, a directory without
model.pt, or a huge sparse file used to hang (hashing /dev/zero forever, blocking on a FIFO) or to
read gigabytes before failing. Each is now refused before a byte is read. The runs go through a
subprocess with a timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import write
from .conftest import TINY_RECIPE, kdbench_command, subprocess_env

KD = TINY_RECIPE.replace('name = "natural"', 'name = "kd"').replace('name = "tiny"', 'name = "kd"')


def _target(kind: str, tmp_path: Path) -> Path:
    if kind == "dev-zero":
        return Path("/dev/zero")
    if kind == "fifo":
        fifo = tmp_path / "teacher.pt"
        os.mkfifo(fifo)
        return fifo
    if kind == "directory":
        folder = tmp_path / "not-a-run"
        folder.mkdir()
        return folder
    sparse = tmp_path / "huge.pt"  # 64 GiB of holes: instant to make, hours to read
    with open(sparse, "wb") as fh:
        fh.truncate(64 * 2**30)
    return sparse


EXPECTED = {
    "dev-zero": "is not a regular file (a device, FIFO or socket)",
    "fifo": "is not a regular file (a device, FIFO or socket)",
    "directory": "has no model.pt; is the run finished?",
    "huge-sparse": "is 64.0 GiB, above the 16.0 GiB weights limit",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_teacher_checkpoint_that_is_not_a_weights_file_is_refused_fast(tmp_path, kind):
    target = _target(kind, tmp_path)
    recipe = write(tmp_path / "kd.toml", KD + f'\n[teacher]\nmodel = "resnet8"\ncheckpoint = "{target}"\n')
    for command in ("validate", "run"):
        proc = subprocess.run(
            kdbench_command(
                command, str(recipe), *(["--out", str(tmp_path / "out"), "--quiet"] if command == "run" else [])
            ),
            capture_output=True,
            text=True,
            env=subprocess_env(KDBENCH_CACHE_DIR=str(tmp_path / "cache")),
            timeout=60,
        )
        if command == "validate" and kind == "directory":
            continue  # an empty folder may become a run later: validate accepts it, run refuses it
        assert proc.returncode == 2, (command, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert str(target) in proc.stderr and EXPECTED[kind] in proc.stderr


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_recipe_path_that_is_not_a_file_is_refused_fast(tmp_path, kind):
    target = _target(kind, tmp_path)
    proc = subprocess.run(
        kdbench_command("validate", str(target)), capture_output=True, text=True, env=subprocess_env(), timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"kdbench: error: {target}: not a regular file (a device, FIFO or socket); give the path of a .toml recipe file"
    )
