"""SIGTERM outside the epoch loop (here: during evaluation) exits 130 with the resume hint, like SIGINT.

It used to kill the process with the default action (exit -15, no message). The rerun then finishes
the run from its checkpoints without training again.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from kdbench.testing import tiny_recipe

from ..conftest import write
from .conftest import kdbench_command, subprocess_env, wait_for

#: One quick epoch, then a PGD-20 evaluation long enough to be signalled in.
SLOW_EVAL = tiny_recipe(
    "slow-eval", seed=5, test_size=512, train_extra="deterministic = true", attacks=("clean", "pgd20")
)


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],  # SIGINT already did this: second tier
    ids=["SIGTERM", "SIGINT"],
)
def test_signal_during_evaluation_exits_130_with_the_resume_hint(tmp_path, sig):
    recipe = write(tmp_path / "slow.toml", SLOW_EVAL)
    out = tmp_path / "out"
    command = kdbench_command("run", str(recipe), "--out", str(out), "--quiet")
    env = subprocess_env(KDBENCH_CACHE_DIR=str(tmp_path / "cache"))
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        wait_for((out / "model.pt").is_file, proc, what="the evaluation", stderr=err_path)  # written before it
        proc.send_signal(sig)
        returncode = proc.wait(timeout=120)
    stderr = err_path.read_text()
    assert returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"kdbench: stopped by signal {int(sig)} outside training (data, teacher or evaluation); "
        "finished epochs are checkpointed; run the same command to resume"
    )
    assert not (out / "result.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" not in rerun.stderr or "epoch 2" not in rerun.stderr
    assert json.loads((out / "result.json").read_text())["train"]["epochs"] == 1
