"""SIGTERM and SIGINT: the run finishes its step, checkpoints, exits 130 saying how to resume, and the
rerun ends with the weights of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import warnings

import pytest

from kdbench.engine.checkpoint import CheckpointStore

from .conftest import kdbench_command, state_digest, subprocess_env, wait_for, weights


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_exits_130_and_resumes_exactly(crash_reference, tmp_path, sig):
    out = tmp_path / "out"
    command = kdbench_command("run", str(crash_reference.recipe), "--out", str(out), "--quiet")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=subprocess_env())
        metrics = out / "metrics.jsonl"
        # Epoch 1 is checkpointed and logged: the signal lands in epoch 2 (of 6), usually mid-epoch.
        wait_for(metrics.is_file, proc, what="the first epoch", stderr=err_path)
        proc.send_signal(sig)
        returncode = proc.wait(timeout=120)
    stderr = err_path.read_text()
    assert returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"kdbench: stopped by signal {int(sig)} ")
    assert last.endswith("; run the same command to resume")

    store = CheckpointStore(out / "checkpoints")
    newest = store.positions()[0]
    assert (1, 0) <= newest < (6, 0)
    assert str(store.path(newest)) in last or f"after epoch {newest[0]}" in last
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkpoint written on the signal is complete and verified
        loaded = store.load_latest()
    assert loaded is not None
    assert loaded[0] == store.path(newest)
    assert not (out / "model.pt").exists()
    assert not (out / "result.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert state_digest(weights(out)) == state_digest(weights(crash_reference.out))
    epochs = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    assert len(epochs) == 6
