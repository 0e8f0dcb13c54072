"""Mid-epoch resume of a data-parallel run is bitwise: 2 gloo processes, stopped mid-epoch and killed.

A preempted job (SLURM, a cloud spot instance) gets SIGTERM, then SIGKILL after a grace period. The
trainer turns the SIGTERM into a mid-epoch checkpoint; the SIGKILL then takes the processes down.
Resumed, every process must continue its own stream: the same data slice and augmentation (they
depend on (seed, epoch) only), its own global RNG state (the training attack's random starts differ
between processes) and its own BatchNorm statistics (each process normalises its own slice, and
RSLAD's attack runs the student in eval mode, on those statistics).
"""

from __future__ import annotations

import pytest
import torch

from .test_distributed_memory import final_state, train

RSLAD = {"method": "rslad", "options": {}, "attack": {"steps": 2}, "batchnorm": True, "epochs": 2}


@pytest.mark.slow  # three 2-process jobs: about 20 s on a loaded 2-core machine
def test_mid_epoch_resume_under_two_processes_is_bitwise(tmp_path):
    whole = train(tmp_path / "whole", 2, **RSLAD)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "cut"
    # 48 samples, global batch 16: 3 steps per epoch; stopped after step 2 of epoch 1, then SIGKILLed.
    killed = train(out, 2, stop_at=[0, 2], kill_at=[0, 2], **RSLAD)
    assert killed.returncode != 0
    assert [p.name for p in (out / "checkpoints").glob("*.pt")] == ["ckpt-e0000-b000002.pt"]
    resumed = train(out, 2, **RSLAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank in (0, 1):
        a, b = final_state(tmp_path / "whole", rank), final_state(out, rank)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (rank, key)
        rng_a = torch.load(tmp_path / "whole" / f"final-r{rank}.pt", weights_only=True)["rng"]
        rng_b = torch.load(out / f"final-r{rank}.pt", weights_only=True)["rng"]
        assert torch.equal(rng_a, rng_b), rank
    # Not vacuous: the two processes' BatchNorm statistics differ, so rank 0's could not stand in for rank 1's.
    r0, r1 = final_state(out, 0), final_state(out, 1)
    assert any(not torch.equal(r0[k], r1[k]) for k in r0 if "running_mean" in k)


def test_resume_with_another_number_of_processes_is_refused_in_one_line(tmp_path):
    out = tmp_path / "cut"
    killed = train(out, 2, stop_at=[0, 2], kill_at=[0, 2], **RSLAD)
    assert killed.returncode != 0
    alone = train(out, 1, **RSLAD)
    assert alone.returncode != 0
    last = alone.stderr.strip().splitlines()[-1]
    assert "holds checkpoints of a run with 2 process(es), but this one has 1" in last
    assert "resume it with 2 processes in all (torchrun --nproc_per_node=2" in last
