"""Data-parallel runs: torchrun with 2 CPU processes (gloo) on a tiny recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdbench.cli import main

from .conftest import write

RECIPE = """
name = "ddp"
seed = 0
[data]
dataset = "fake"
options = {train_size = 128, test_size = 32, image_size = 16}
[student]
model = "resnet8"
[method]
name = "pgd_at"
[attack]
steps = 2
[train]
epochs = 2
batch_size = 32
device = "cpu"
[eval]
attacks = ["clean", "pgd20"]
"""


def _torchrun(*args: str, cwd, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:  # a throw-away plugin distribution the processes must find
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kdbench", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_torchrun_two_processes_train_one_result(tmp_path):
    recipe = write(tmp_path / "ddp.toml", RECIPE)
    out = tmp_path / "out"
    proc = _torchrun("run", str(recipe), "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["train"]["epochs"] == 2
    # 128 images, global batch 32 -> 4 steps per epoch, each process 16 images per step
    assert result["train"]["train_size"] == 128
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert proc.stdout.count("result: ") == 1  # only rank 0 reports
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == [
        "ckpt-e0001-b000000.pt",
        "ckpt-e0002-b000000.pt",
    ]
    # The evaluation at the end was shared by both processes (one chunk each) and merged: one process
    # evaluating the same examples with that chunk size (what `kdbench eval RUN` reads from result.json)
    # finds the same numbers.
    assert result["evaluation"]["attacks"]["pgd20"]["chunk_size"] == 16
    assert not (out / "result.progress").exists()
    assert main(["eval", str(out), "--out", str(tmp_path / "alone.json")]) == 0
    alone = json.loads((tmp_path / "alone.json").read_text())
    assert alone["metrics"] == result["metrics"]
    assert alone["flags"] == result["flags"]
    again = _torchrun("run", str(recipe), "--out", str(out), "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("result: ") == 1


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_methods_with_unsynchronised_state_refuse_data_parallel(tmp_path, fake_distribution):
    """A plugin that declares ``supports_data_parallel = False`` (state it does not synchronise) is refused
    in one line before anything is built."""
    site = fake_distribution(
        "unsynced-method",
        entry_points={"kdbench.methods": {"unsynced": "unsynced_method:Unsynced"}},
        modules={
            "unsynced_method": """
                from kdbench_plugins.pgd_at import PGDAT

                class Unsynced(PGDAT):
                    supports_data_parallel = False
            """
        },
    )
    recipe = write(tmp_path / "unsynced.toml", RECIPE.replace('name = "pgd_at"', 'name = "unsynced"'))
    proc = _torchrun("run", str(recipe), "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path, pythonpath=str(site))
    assert proc.returncode != 0  # torchrun exits 1 when a process exits 2
    assert "method 'unsynced' keeps state that is not synchronised across processes" in proc.stderr
    assert "kdbench/run.py" not in proc.stderr  # one line, no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow  # a teacher and a student under torchrun: about a minute on 2 loaded cores
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("method", ["crd", "gacd"])
def test_memory_bank_methods_train_under_torchrun(tmp_path, method):
    """The whole command: teacher trained first (data-parallel too), then the method, evaluation shared."""
    write(tmp_path / "teacher.toml", RECIPE.replace('name = "ddp"', 'name = "t"').replace("pgd_at", "natural"))
    recipe = write(
        tmp_path / f"{method}.toml",
        RECIPE.replace('name = "pgd_at"', f'name = "{method}"\nnegatives = 64').replace(
            "[student]", '[teacher]\nrecipe = "teacher.toml"\n[student]'
        ),
    )
    out = tmp_path / "out"
    proc = _torchrun(
        "run", str(recipe), "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--quiet", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["method"] == method
    state = torch.load(out / "checkpoints" / "ckpt-e0002-b000000.pt", weights_only=True)
    labels = state["method"]["memory.labels"]
    assert (labels >= 0).all()  # every row labelled: each process saw the other's batches too
    assert "memory.shared_rng._extra_state" in state["method"]


@pytest.mark.slow  # two teachers and a student under torchrun
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_mtard_trains_under_torchrun(tmp_path):
    """MTARD with its robust and natural teachers (one teacher recipe serves both here): the run finishes
    data-parallel and its checkpoint holds one set of adaptive weights that moved from 0.5."""
    write(tmp_path / "teacher.toml", RECIPE.replace('name = "ddp"', 'name = "t"').replace("pgd_at", "natural"))
    teachers = '[teacher]\nrecipe = "teacher.toml"\n[teachers.natural]\nrecipe = "teacher.toml"\n'
    recipe = write(
        tmp_path / "mtard.toml",
        RECIPE.replace('name = "pgd_at"', 'name = "mtard"').replace("[student]", teachers + "[student]"),
    )
    out = tmp_path / "out"
    proc = _torchrun(
        "run", str(recipe), "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--quiet", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["method"] == "mtard"
    state = torch.load(out / "checkpoints" / "ckpt-e0002-b000000.pt", weights_only=True)
    assert float(state["method"]["natural_weight"]) != 0.5
    assert (state["method"]["initial_losses"] > 0).all()
