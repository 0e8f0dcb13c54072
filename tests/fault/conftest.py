"""Shared pieces of the fault tests: a tiny deterministic recipe, subprocess runs, and exact comparisons.

Runs that a test kills or signals go through ``python -m kdbench run`` in a subprocess (the real
command, the real signal handling); their reference runs go through the same path, so "bitwise
identical" compares like with like (same thread count, same process start-up).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ..conftest import write

#: 6 epochs of 16 steps (natural training of ResNet-8 on 16x16 fake images): long enough to be
#: stopped mid-run, short enough to run many times. train.deterministic makes CPU runs bitwise exact.
CRASH_RECIPE = """
name = "crash"
seed = 11
[data]
dataset = "fake"
options = {train_size = 512, test_size = 32, image_size = 16}
[student]
model = "resnet8"
[method]
name = "natural"
[train]
epochs = 6
batch_size = 32
deterministic = true
[eval]
attacks = ["clean"]
"""

#: The same model and data for in-process tests: 3 epochs of 3 steps.
TINY_RECIPE = """
name = "tiny"
seed = 3
[data]
dataset = "fake"
options = {train_size = 96, test_size = 32, image_size = 16}
[student]
model = "resnet8"
[method]
name = "natural"
[train]
epochs = 3
batch_size = 32
deterministic = true
[eval]
attacks = ["clean"]
"""

#: Keys of a metrics.jsonl row that measure time, not training.
TIMING_KEYS = frozenset({"seconds"})


def kdbench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdbench", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test's environment for a kdbench subprocess, with one intra-op thread: every process of a test
    then computes with the same thread count (so results compare bitwise), and on a shared machine no
    spinning OpenMP threads slow the run down by orders of magnitude."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def weights(out: Path) -> dict[str, torch.Tensor]:
    """The state_dict of a run's model.pt."""
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes (equal digests = bitwise-equal weights)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metrics_rows(out: Path) -> list[dict[str, object]]:
    """metrics.jsonl without its timing fields."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same_run(out: Path, reference: Path) -> None:
    """Bitwise-identical weights and identical per-epoch metrics (timing aside)."""
    assert state_digest(weights(out)) == state_digest(weights(reference)), f"weights of {out} differ from {reference}"
    assert metrics_rows(out) == metrics_rows(reference)


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """In-process runs of these tests use one thread, like their subprocesses (see `subprocess_env`): on a
    busy shared machine, spinning OpenMP threads make a tiny run up to 20 times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Reference:
    recipe: Path
    out: Path
    seconds: float  # wall time of the uninterrupted `python -m kdbench run`


@pytest.fixture(scope="session")
def crash_reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """CRASH_RECIPE run once, uninterrupted, through the command line (shared by the kill/signal tests)."""
    root = tmp_path_factory.mktemp("crash-reference")
    recipe = write(root / "crash.toml", CRASH_RECIPE)
    env = subprocess_env(
        KDBENCH_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "decode-cache"), KDBENCH_RUNS_DIR=str(root / "runs")
    )
    tic = time.perf_counter()
    proc = subprocess.run(
        kdbench_command("run", str(recipe), "--out", str(root / "out"), "--quiet"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds = time.perf_counter() - tic
    assert proc.returncode == 0, proc.stderr
    return Reference(recipe, root / "out", seconds)


def wait_for(
    predicate: Callable[[], bool], proc: subprocess.Popen[bytes], *, what: str, stderr: Path, timeout: float = 300.0
) -> None:
    """Poll ``predicate`` every 5 ms until it holds; fail if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run exited with {proc.returncode} before {what}: {stderr.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
