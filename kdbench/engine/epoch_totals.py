"""What one training epoch adds up on the device: loss-term sums, correct predictions, the first bad step.

The trainer adds every step's terms here without reading anything back (no host synchronisation in
the step); values are read only at the sync points the trainer chooses (`means`, `accuracy`,
`first_bad_step`). A run stopped mid-epoch saves the totals of the finished steps (`partial`, summed
over the processes), and its resume starts from them (`resume`), so the epoch's row is the mean over
all its steps, as in an uninterrupted run.

Per loss term ``k`` with values ``v_b`` at steps ``b``: ``sum_k = sum_b v_b`` (float32, on the device);
``mean_k = sum over processes of sum_k / (steps * world_size)``. The first step whose term is NaN or
infinite is kept with the names of the terms that were bad at that step (later steps are not: once the
weights are NaN every term is).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdbench.engine.distributed import Distributed

__all__ = ["EpochTotals"]


class EpochTotals:
    """The running totals of one epoch (this process's steps), kept as device tensors."""

    def __init__(self, device: torch.device, dist: Distributed, start_batch: int = 0):
        self.device = device
        self.dist = dist
        self.sums: dict[str, Tensor] = {}
        zero = torch.zeros((), device=device)
        self.correct, self.seen = zero.clone(), zero.clone()
        #: The first step whose loss is in ``sums`` (0 after a resume that restored the saved totals).
        self.counted_from = start_batch
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms: dict[str, Tensor] = {}

    def resume(self, partial: dict[str, Any] | None) -> None:
        """Continue from the totals a mid-epoch checkpoint saved (`partial`); None: an older checkpoint
        without them, so the means cover the steps from the resume on (``counted_from``)."""
        if partial is None:
            return
        self.counted_from = 0
        if self.dist.rank == 0:  # the saved sums are over every process already
            self.sums = {k: v.to(self.device) for k, v in partial["sums"].items()}
            self.correct, self.seen = partial["correct"].to(self.device), partial["seen"].to(self.device)

    def add(self, batch: int, terms: dict[str, Tensor], logits: Tensor | None, y: Tensor) -> None:
        """One step's loss terms (and training accuracy when the method reports logits); no host reads."""
        fresh = self.first_bad < 0
        for name, value in terms.items():
            v = value.detach().float()
            self.sums[name] = self.sums[name] + v if name in self.sums else v
            bad = fresh & ~torch.isfinite(v)
            self.bad_terms[name] = self.bad_terms[name] | bad if name in self.bad_terms else bad
            self.first_bad = torch.where(bad, batch, self.first_bad)
        if logits is not None:
            self.correct += (logits.argmax(1) == y).sum()
            self.seen += y.numel()

    def means(self, steps_done: int) -> dict[str, float]:
        """Each term's mean over the counted steps of every process (one sync for all terms)."""
        if not self.sums:
            return {}
        count = max(steps_done - self.counted_from, 1)
        stacked = self.dist.sum(torch.stack(list(self.sums.values())))
        values = stacked.div(count * self.dist.world_size).tolist()
        return dict(zip(self.sums, values, strict=True))

    def local_accuracy(self) -> float:
        """This process's training accuracy so far (a progress value; reads the device)."""
        return (self.correct / self.seen.clamp(min=1)).item()

    def accuracy(self) -> float | None:
        """The epoch's training accuracy over every process, None when the method reports no logits."""
        self.dist.sum(self.correct)
        self.dist.sum(self.seen)
        return (self.correct / self.seen).item() if self.seen.item() > 0 else None

    def first_bad_step(self) -> tuple[int, list[str]] | None:
        """``(step, names of its bad terms)`` of the first non-finite step in any process, else None."""
        step = int(self.dist.max(self.first_bad.clone()).item())
        if step < 0:
            return None
        return step, [name for name, flag in self.bad_terms.items() if bool(flag.item())]

    def partial(self, steps_done: int) -> dict[str, Any]:
        """The totals of the finished steps, summed over the processes, for a mid-epoch checkpoint."""
        return {
            "steps": steps_done,
            "sums": {k: self.dist.sum(v.detach().clone()).cpu() for k, v in self.sums.items()},
            "correct": self.dist.sum(self.correct.clone()).cpu(),
            "seen": self.dist.sum(self.seen.clone()).cpu(),
        }
