"""After SIGTERM/SIGINT mid-epoch and a resume, metrics.jsonl and result.json say what an uninterrupted
run says: the interrupted epoch's loss and accuracy are means over all its steps (the partial sums
travel in the checkpoint), not over the resumed steps only. Only timing fields may differ.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kdbench.engine.checkpoint import CheckpointStore

from .conftest import kdbench_command, subprocess_env, wait_for

#: Fields of result.json / metrics.jsonl rows that measure time or the machine, not training
#: (``cost`` holds seconds, images per second and peak memory).
TIMING = frozenset({"seconds", "images_per_second", "cost"})


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _rows(out: Path) -> list[dict[str, Any]]:
    return [_without_timing(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _interrupt_mid_epoch(recipe: Path, out: Path, sig: int, tmp_path: Path, attempt: int) -> tuple[int, int]:
    """Run, signal once the second epoch has begun, and return the position checkpointed on the signal."""
    command = kdbench_command("run", str(recipe), "--out", str(out), "--quiet")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=subprocess_env())
        wait_for((out / "metrics.jsonl").is_file, proc, what="the first epoch", stderr=err_path)
        time.sleep(0.1 * (attempt + 1))  # past the end-of-epoch fsyncs, into epoch 2's steps
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 130, err_path.read_text()
    return CheckpointStore(out / "checkpoints").positions()[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_resumed_run_reports_the_same_metrics_as_an_uninterrupted_one(crash_reference, tmp_path, sig):
    for attempt in range(3):  # the signal must land mid-epoch (it nearly always does: 16 steps per epoch)
        out = tmp_path / f"out{attempt}"
        position = _interrupt_mid_epoch(crash_reference.recipe, out, sig, tmp_path, attempt)
        if position[1] > 0:
            break
    else:
        pytest.fail("the signal never landed mid-epoch")

    command = kdbench_command("run", str(crash_reference.recipe), "--out", str(out), "--quiet")
    rerun = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    assert _rows(out) == _rows(crash_reference.out)
    result = json.loads((out / "result.json").read_text())
    reference = json.loads((crash_reference.out / "result.json").read_text())
    assert _without_timing(result) == _without_timing(reference)
