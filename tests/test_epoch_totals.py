"""kdbench.engine.epoch_totals: the epoch's device-side sums, the first bad step, and a mid-epoch resume."""

from __future__ import annotations

import math

import torch

from kdbench.engine.distributed import Distributed
from kdbench.engine.epoch_totals import EpochTotals


def _terms(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"ce": torch.tensor(a), "kd": torch.tensor(b)}


def test_means_accuracy_and_the_first_bad_step():
    totals = EpochTotals(torch.device("cpu"), Distributed())
    y = torch.tensor([0, 1, 1, 0])
    right = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # 3 of 4 correct
    totals.add(0, _terms(1.0, 2.0), right, y)
    totals.add(1, _terms(3.0, 4.0), right, y)
    assert totals.means(2) == {"ce": 2.0, "kd": 3.0}
    assert totals.local_accuracy() == 0.75
    assert totals.first_bad_step() is None
    totals.add(2, _terms(math.nan, 1.0), None, y)
    totals.add(3, _terms(math.inf, math.nan), None, y)  # later bad steps are not reported
    assert totals.first_bad_step() == (2, ["ce"])
    assert totals.accuracy() == 0.75  # steps without logits add nothing to the accuracy


def test_a_resumed_epoch_continues_the_saved_totals():
    whole = EpochTotals(torch.device("cpu"), Distributed())
    for step in range(4):
        whole.add(step, _terms(float(step), 1.0), None, torch.zeros(2))
    first = EpochTotals(torch.device("cpu"), Distributed())
    for step in range(2):
        first.add(step, _terms(float(step), 1.0), None, torch.zeros(2))
    saved = first.partial(2)
    resumed = EpochTotals(torch.device("cpu"), Distributed(), start_batch=2)
    resumed.resume(saved)
    for step in range(2, 4):
        resumed.add(step, _terms(float(step), 1.0), None, torch.zeros(2))
    assert resumed.counted_from == 0
    assert resumed.means(4) == whole.means(4) == {"ce": 1.5, "kd": 1.0}


def test_a_resume_without_saved_totals_counts_from_the_resume():
    """Checkpoints of older versions hold no totals: the means cover the steps after the resume."""
    totals = EpochTotals(torch.device("cpu"), Distributed(), start_batch=3)
    totals.resume(None)
    totals.add(3, _terms(2.0, 4.0), None, torch.zeros(1))
    assert totals.counted_from == 3 and totals.means(4) == {"ce": 2.0, "kd": 4.0}
