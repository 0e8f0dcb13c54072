"""Data-parallel and resumable ``kdbench eval``: torchrun with 2 gloo processes, and a SIGKILL mid-attack.

The merged counts, the per-example worst case and the flags of 2 processes equal those of one process
evaluating the same examples with the same seed and chunk size; AutoAttack included. A killed
evaluation, run again, resumes at the chunk it reached and ends with the numbers of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.testing import tiny_recipe

from .conftest import write

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

RECIPE = tiny_recipe("evaluated", train_size=512, test_size=48, epochs=3, train_extra='lr = 0.05\ndevice = "cpu"')
ATTACKS = ["clean", "fgsm", "pgd5", "cw"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def alone(*args: str) -> None:
    """``kdbench ARGS`` in this process (one process; no interpreter start-up)."""
    assert main(list(args)) == 0


def kdbench(*args: str, processes: int = 1) -> subprocess.CompletedProcess:
    """``kdbench ARGS`` in a fresh interpreter, under torchrun when ``processes`` > 1."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [*(launcher if processes > 1 else [sys.executable]), "-m", "kdbench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    alone("run", str(write(folder / "r.toml", RECIPE)), "--out", str(folder / "run"), "--quiet")
    return folder / "run"


def _numbers(path: Path) -> dict:
    result = json.loads(path.read_text())
    return {"metrics": result["metrics"], "flags": result["flags"]}


def test_two_processes_merge_to_the_numbers_of_one(run_folder, tmp_path):
    common = ["eval", str(run_folder), "--attacks", *ATTACKS, "--eps", "4/255"]
    alone(*common, "--chunk-size", "10", "--out", str(tmp_path / "one.json"))
    two = kdbench(*common, "--chunk-size", "10", "--out", str(tmp_path / "two.json"), processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _numbers(tmp_path / "one.json"), _numbers(tmp_path / "two.json")
    assert a == b
    counts = a["metrics"]["counts"]
    assert 0 < counts["worst"] < counts["clean"]  # the attacks flip some examples: the comparison means something
    assert two.stdout.count("eval: ") == 1  # rank 0 reports and writes; nothing else is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]
    record = json.loads((tmp_path / "two.json").read_text())["evaluation"]["attacks"]
    assert record["pgd5"]["chunk_size"] == 10


def test_default_chunks_under_torchrun_are_one_per_process_and_reproducible_alone(run_folder, tmp_path):
    two = kdbench(
        "eval", str(run_folder), "--attacks", "clean", "pgd5", "--out", str(tmp_path / "two.json"), processes=2
    )
    assert two.returncode == 0, two.stderr[-3000:]
    record = json.loads((tmp_path / "two.json").read_text())
    assert record["evaluation"]["attacks"]["pgd5"]["chunk_size"] == 24  # 48 examples, 2 processes
    alone(
        "eval", str(run_folder), "--attacks", "clean", "pgd5", "--chunk-size", "24", "--out", str(tmp_path / "one.json")
    )
    assert _numbers(tmp_path / "one.json") == _numbers(tmp_path / "two.json")


def test_more_processes_than_examples_is_one_line(run_folder, tmp_path):
    proc = kdbench(
        "eval",
        str(run_folder),
        "--attacks",
        "clean",
        "--num-examples",
        "1",
        "--out",
        str(tmp_path / "e.json"),
        processes=2,
    )
    assert proc.returncode != 0
    assert "kdbench: error: 2 processes but only 1 examples to evaluate; start at most 1 processes" in proc.stderr
    assert "kdbench/evaluation" not in proc.stderr  # no traceback of ours
    assert not (tmp_path / "e.json").exists()


@pytest.mark.slow  # standard AutoAttack's FAB-T and Square (5000 queries) on the CPU: about a minute
def test_autoattack_shards_merge_to_the_numbers_of_one(run_folder, tmp_path):
    common = ["eval", str(run_folder), "--attacks", "clean", "autoattack", "--num-examples", "16", "--chunk-size", "4"]
    alone(*common, "--out", str(tmp_path / "one.json"))
    two = kdbench(*common, "--out", str(tmp_path / "two.json"), processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _numbers(tmp_path / "one.json") == _numbers(tmp_path / "two.json")


@pytest.mark.slow  # about 20 s on a loaded 2-core machine
def test_autoattack_custom_shards_merge_to_the_numbers_of_one(run_folder, tmp_path):
    """pyautoattack through the same path as the standard version (APGD-CE + APGD-T only: seconds)."""
    common = [
        "eval",
        str(run_folder),
        "--attacks",
        "clean",
        "autoattack_custom",
        "--num-examples",
        "12",
        "--chunk-size",
        "4",
    ]
    alone(*common, "--out", str(tmp_path / "one.json"))
    two = kdbench(*common, "--out", str(tmp_path / "two.json"), processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a = _numbers(tmp_path / "one.json")
    assert a == _numbers(tmp_path / "two.json")
    assert a["metrics"]["counts"]["autoattack_custom"] < a["metrics"]["counts"]["clean"]


@pytest.mark.parametrize("resume_processes", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_kill_mid_attack_resumes_at_the_chunk_it_reached(run_folder, tmp_path, resume_processes):
    """Resumed by one process, or by two (the chunks do not depend on who computes them)."""
    args = ["eval", str(run_folder), "--attacks", "clean", "pgd100", "--eps", "4/255", "--chunk-size", "8"]
    out = tmp_path / "cut.json"
    progress = tmp_path / "cut.progress"
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", *args, "--out", str(out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(progress.glob("*/pgd100-c00000.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of PGD-100: chunk 0 of 6 is on disk
    proc.wait()
    kept = sorted(p.name for p in progress.glob("*/*.pt"))
    assert not out.exists(), "the evaluation finished before the kill"
    assert "pgd100-c00000.pt" in kept and "pgd100-c00005.pt" not in kept
    assert {f"clean-c{k:05d}.pt" for k in range(6)} <= set(kept)
    if resume_processes == 1:
        alone(*args, "--out", str(out))
    else:
        resumed = kdbench(*args, "--out", str(out), processes=resume_processes)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not progress.exists()  # eval.json holds it all; the progress is removed
    alone(*args, "--out", str(tmp_path / "whole.json"))  # uninterrupted
    assert _numbers(out) == _numbers(tmp_path / "whole.json")


def test_the_speed_up_measurement_recipes_validate():
    """benchmarks/distributed/measure_cpu.sh measures the ratio of docs/distributed.md with these recipes."""
    folder = Path(__file__).resolve().parent.parent / "benchmarks" / "distributed"
    recipes = sorted(str(p) for p in folder.glob("*.toml"))
    assert len(recipes) == 2 and (folder / "measure_cpu.sh").is_file()
    assert main(["validate", *recipes]) == 0


RUN_RECIPE = tiny_recipe(
    "killed-in-eval",
    train_size=256,
    test_size=48,
    train_extra='device = "cpu"\ndeterministic = true',
    attacks=("clean", "pgd100"),
    eval_extra='eps = "4/255"\nchunk_size = 8',
)


def test_a_run_killed_in_its_evaluation_resumes_at_the_chunk_it_reached(tmp_path):
    recipe = write(tmp_path / "r.toml", RUN_RECIPE)
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(recipe), "--out", str(out), "--quiet"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    progress = out / "result.progress"
    while not list(progress.glob("*/pgd100-c00000.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists(), "the run finished before the kill"
    assert "pgd100-c00005.pt" not in {p.name for p in progress.glob("*/*.pt")}
    alone("run", str(recipe), "--out", str(out), "--quiet")  # the same command: resumes
    log = (out / "train.log").read_text()
    assert "pgd100: " in log and "chunks (" in log and "kept by an interrupted evaluation" in log
    assert not progress.exists()
    alone("run", str(recipe), "--out", str(tmp_path / "whole"), "--quiet")
    cut, whole = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("cut", "whole"))
    assert cut["metrics"] == whole["metrics"] and cut["flags"] == whole["flags"]
