"""Methods with state (crd and gacd's memory banks, mtard's adaptive weights) under data parallelism:
2 gloo processes equal 1 on the same global batch.

Every process must hold the banks, row labels and normalisers Z one process holds after the same
global batches, draw the same negatives, and so reach the same weights (to float tolerance: the
matrix products run on half batches). A SIGKILL and a resume must not change that. MTARD's teacher
weights must follow the global batch's losses, not each process's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def train(out: Path, processes: int, **spec: Any) -> subprocess.CompletedProcess:
    """Run tests/ddp_worker.py in ``processes`` processes (torchrun, gloo) or in this one's interpreter."""
    full = {"out": str(out), "n": 48, "seed": 3, "epochs": 3, "global_batch": 16, "attack": None, **spec}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    cmd = [*(launcher if processes > 1 else [sys.executable]), str(WORKER), json.dumps(full)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def final_state(out: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    state = torch.load(out / f"final-r{rank}.pt", weights_only=True)
    flat = {f"student.{k}": v for k, v in state["student"].items()}
    flat.update({f"method.{k}": v for k, v in state["method"].items() if isinstance(v, torch.Tensor)})
    return flat


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


CASES = {
    "crd": {"method": "crd", "options": {"embed_dim": 8, "negatives": 20}},
    # The attack without a random start: the processes' global RNG streams differ from one process's.
    "gacd": {
        "method": "gacd",
        "options": {"embed_dim": 8, "negatives": 20},
        "attack": {"steps": 2, "random_start": "none"},
    },
}


def test_two_processes_hold_the_adaptive_teacher_weights_of_one(tmp_path):
    """MTARD: w_nat and L_init after 9 steps equal one process's on the global batch; without the
    all-reduce each process would step w_nat from its own shard's losses and the two would differ."""
    spec = {
        "method": "mtard",
        "options": {"eta": 0.3},  # large steps, so a shard-wise update would visibly drift
        "attack": {"steps": 2, "random_start": "none"},
        "extra_teachers": ["natural"],
    }
    one = train(tmp_path / "one", 1, **spec)
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(tmp_path / "two", 2, **spec)
    assert two.returncode == 0, two.stderr[-3000:]
    a, r0, r1 = final_state(tmp_path / "one"), final_state(tmp_path / "two"), final_state(tmp_path / "two", 1)
    assert float(a["method.natural_weight"]) != 0.5  # the weights moved
    assert torch.equal(r0["method.natural_weight"], r1["method.natural_weight"])  # one value on every process
    assert_same_state(a, r0)


# The other branches of gacd: teacher-anchored only (its guided attack estimates Z from the positives
# alone), and memory-row positives. Slow tier: three jobs each.
CASES["gacd_teacher_anchored"] = {**CASES["gacd"], "options": {**CASES["gacd"]["options"], "anchors": "teacher"}}
CASES["gacd_memory_positives"] = {**CASES["gacd"], "options": {**CASES["gacd"]["options"], "positives": "memory"}}
SLOW_CASES = {"gacd_teacher_anchored", "gacd_memory_positives"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in sorted(CASES)]
)
def test_two_processes_hold_the_banks_and_weights_of_one(tmp_path, case):
    spec = CASES[case]
    one = train(tmp_path / "one", 1, shared_rng=True, **spec)
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(tmp_path / "two", 2, **spec)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    # Every row was visited (3 epochs of 48 samples): the labels are the dataset's; Z is set.
    assert torch.equal(b["method.memory.labels"], torch.arange(48) % 4)
    assert float(b["method.memory.z_student"]) > 0
    assert ("method.memory.memory_teacher" in b) == (spec["options"].get("anchors") != "teacher")
    assert_same_state(a, b)
    # Not vacuous: the banks moved away from their initial rows and the draws are not the global RNG's.
    plain = train(tmp_path / "plain", 1, **spec)
    assert plain.returncode == 0, plain.stderr[-3000:]
    c = final_state(tmp_path / "plain")
    assert not torch.allclose(c["method.memory.memory_student"], b["method.memory.memory_student"], atol=1e-3)


def test_resume_after_a_kill_keeps_two_processes_equal_to_one(tmp_path):
    spec = CASES["crd"]
    one = train(tmp_path / "one", 1, shared_rng=True, **spec)
    assert one.returncode == 0, one.stderr[-3000:]
    out = tmp_path / "two"
    killed = train(out, 2, kill_at=[1, 0], **spec)
    assert killed.returncode != 0
    assert not (out / "final-r0.pt").exists()
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["ckpt-e0001-b000000.pt"]
    resumed = train(out, 2, **spec)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(final_state(tmp_path / "one"), final_state(out))
