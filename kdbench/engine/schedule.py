"""Learning-rate schedules as a per-step multiplier of the peak rate.

One mechanism for every schedule: ``LambdaLR`` stepped once per optimiser step, so resuming needs
only the step count and a partial epoch never shifts a milestone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_scheduler", "lr_factor"]


def lr_factor(
    schedule: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    epochs: int = 1,
) -> Callable[[int], float]:
    """The multiplier of the peak lr at optimiser step ``s`` (0-based).

    - multistep: ``gamma ** #{m : epoch(s) >= m}``, milestones in epochs (values < 1: fractions of
      the run, so ``[0.5, 0.75]`` is the usual 100/150-of-200 schedule at any length)
    - cosine: ``(1 + cos(pi * t)) / 2`` with ``t = s / total_steps``
    - onecycle: linear ramp to 1 over the first 30 % (or the warm-up), then linear decay to 0
      (the short-schedule recipe of fast adversarial training, Wong et al. 2020)
    - constant: 1
    A linear warm-up over ``warmup_epochs`` multiplies multistep, cosine and constant; for onecycle it
    replaces the 30 % ramp.
    """
    epoch_marks = [m * epochs if m < 1 else m for m in milestones]
    warmup_steps = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        t = min(step / max(total_steps, 1), 1.0)
        if schedule == "multistep":
            epoch = step / max(steps_per_epoch, 1)
            base = gamma ** sum(epoch >= m for m in epoch_marks)
        elif schedule == "cosine":
            base = 0.5 * (1.0 + math.cos(math.pi * t))
        elif schedule == "onecycle":  # the warm-up, when given, is the ramp itself
            peak = min(warmup_steps / total_steps, 1.0) if warmup_steps > 0 else 0.3
            if t < peak:
                return t / peak
            return max(0.0, (1.0 - t) / (1.0 - peak)) if peak < 1.0 else 1.0
        elif schedule == "constant":
            base = 1.0
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        if warmup_steps > 0 and step < warmup_steps:
            base *= (step + 1) / warmup_steps
        return base

    return factor


def build_scheduler(optimizer: Optimizer, factor: Callable[[int], float]) -> LambdaLR:
    """A LambdaLR stepped after every optimiser step."""
    return LambdaLR(optimizer, factor)
