"""Crash safety under SIGKILL: a run killed at any moment resumes to bitwise the same result.

Two kinds of kill, both of the real ``python -m kdbench run`` process:

* inside the checkpoint store's writes, deterministically (tests/fault/kill_in_save.py patches
  ``atomic_write_bytes`` in the subprocess; the core has no test hook): half-written temporary file,
  between a checkpoint's sidecar and the checkpoint, a torn checkpoint at its final name (must fail
  its checksum and fall back), and right after the last checkpoint (before metrics.jsonl catches up);
* at 20 seeded random moments spread over whole runs (slow tier): start-up, data building,
  training steps, checkpoint writes, model.pt, evaluation, result.json.

After each kill the same command is run again; the finished run's model.pt weights and metrics.jsonl
(timing fields aside) must equal those of an uninterrupted run.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.engine.checkpoint import CheckpointStore

from .conftest import Reference, assert_same_run, kdbench_command, subprocess_env

KILL_IN_SAVE = Path(__file__).with_name("kill_in_save.py")


def _run_killed_in_save(reference: Reference, out: Path, kill_at: int, mode: str) -> subprocess.CompletedProcess[str]:
    argv = ["run", str(reference.recipe), "--out", str(out), "--quiet"]
    return subprocess.run(
        [sys.executable, str(KILL_IN_SAVE), str(kill_at), mode, *argv],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )


def _run(reference: Reference, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kdbench_command("run", str(reference.recipe), "--out", str(out), "--quiet"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )


def _ckpt(epoch: int) -> tuple[int, int]:
    return (epoch, 0)


def test_kills_inside_checkpoint_writes_resume_bitwise(crash_reference, tmp_path):
    """Each of four processes is killed inside a different write; the fifth finishes the run."""
    out = tmp_path / "out"
    store = CheckpointStore(out / "checkpoints")

    # 1. half of checkpoint 1 in its temporary file: nothing usable yet (the sidecar alone is ignored)
    proc = _run_killed_in_save(crash_reference, out, 2, "tmp")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert store.positions() == []
    assert list((out / "checkpoints").glob(".ckpt-e0001-b000000.pt.tmp-*"))

    # 2. between the sidecar of checkpoint 2 and checkpoint 2 itself
    proc = _run_killed_in_save(crash_reference, out, 4, "between")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert store.positions() == [_ckpt(1)]
    assert (out / "checkpoints" / "ckpt-e0002-b000000.pt.sha256").is_file()

    # 3. resumes at epoch 2, then checkpoint 3 is torn at its final name (its sidecar is complete)
    proc = _run_killed_in_save(crash_reference, out, 4, "torn")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert store.positions()[:2] == [_ckpt(3), _ckpt(2)]

    # 4. the torn checkpoint fails its checksum: resumes from checkpoint 2 with a warning, and is
    #    killed right after writing the last checkpoint, before metrics.jsonl is rewritten
    proc = _run_killed_in_save(crash_reference, out, 8, "after")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "ckpt-e0003-b000000.pt fails its checksum (truncated or corrupted); falling back" in proc.stderr
    assert store.positions()[0] == _ckpt(6)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5
    assert not (out / "model.pt").exists()

    # 5. nothing left to train: writes model.pt, evaluates, and agrees with the uninterrupted run
    proc = _run(crash_reference, out)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, crash_reference.out)


@pytest.mark.slow
def test_twenty_random_sigkills_resume_bitwise(crash_reference, tmp_path):
    """SIGKILL after a seeded random delay in [0, T) (T: the uninterrupted run's wall time), then rerun.

    A run that finishes before its kill is compared with the reference and a fresh one starts, until
    20 kills have hit a live process; every finished run must be bitwise identical to the reference.
    """
    rng = random.Random(20260524)
    kills: list[str] = []  # where each kill landed, for the failure message
    finished = 0
    sequence = 0
    out = tmp_path / "run0"
    attempts = 0
    while len(kills) < 20:
        attempts += 1
        assert attempts < 200, kills
        delay = rng.uniform(0.0, 1.0) * crash_reference.seconds
        err_path = tmp_path / f"stderr-{attempts}.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(
                kdbench_command("run", str(crash_reference.recipe), "--out", str(out), "--quiet"),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=subprocess_env(),
            )
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
                positions = CheckpointStore(out / "checkpoints").positions()
                kills.append(f"{delay:.2f}s: {positions[0] if positions else 'no checkpoint'}")
                continue
        assert proc.returncode == 0, err_path.read_text()
        assert_same_run(out, crash_reference.out)
        finished += 1
        sequence += 1
        out = tmp_path / f"run{sequence}"
    proc = _run(crash_reference, out)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(out, crash_reference.out)
    # The kills reached into training, not only into start-up.
    assert any("no checkpoint" not in k for k in kills), kills
