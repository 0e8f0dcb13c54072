"""A per-epoch eps / step-size schedule for the training attack (the recipe's ``[attack] eps_schedule``).

Curriculum-style training attacks grow the budget over the run (AdaAD's best numbers need an
"increasing eps", Huang et al., CVPR 2023, Fig. 2; curriculum adversarial training, Cai et al.,
IJCAI 2018). A schedule is a list of points ``(epoch e_i, eps_i, step_i)`` with 0-based, strictly
increasing epochs::

    step:    eps(e) = eps_i              for e_i <= e < e_{i+1}
    linear:  eps(e) = eps_i + (e - e_i) / (e_{i+1} - e_i) * (eps_{i+1} - eps_i)
    eps(e) = the attack's own eps (and step) before the first point; eps of the last point after it

A point without ``step_size`` keeps the attack's ratio ``step_size / eps``. No point may exceed the
attack's ``eps``: the schedule moves inside the threat model, never beyond it.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field

from kdbench.config import Number, StrictModel

__all__ = ["EpsPoint", "EpsSchedule", "budget_at"]


class EpsPoint(StrictModel):
    """From ``epoch`` on (0-based), the training attack uses ``eps`` (and ``step_size``)."""

    epoch: int = Field(ge=0, description="0-based epoch from which this budget applies")
    eps: Number = Field(ge=0, description='the attack budget from this epoch, e.g. "4/255"')
    step_size: Number | None = Field(None, gt=0, description="step size from this epoch (default: eps x the ratio)")


class EpsSchedule(StrictModel):
    """The points and how to go from one to the next."""

    points: list[EpsPoint] = Field(default_factory=list)
    interpolation: Literal["step", "linear"] = "step"


def budget_at(schedule: EpsSchedule, epoch: int, base_eps: float, base_step: float) -> tuple[float, float]:
    """``(eps, step_size)`` of the training attack at ``epoch`` (module docstring); the base without points."""
    points = schedule.points
    ratio = base_step / base_eps if base_eps > 0 else 0.0

    def at(point: EpsPoint) -> tuple[float, float]:
        return point.eps, point.step_size if point.step_size is not None else point.eps * ratio

    if not points or epoch < points[0].epoch:
        return base_eps, base_step
    for here, after in itertools.pairwise(points):
        if here.epoch <= epoch < after.epoch:
            eps, step = at(here)
            if schedule.interpolation == "step":
                return eps, step
            t = (epoch - here.epoch) / (after.epoch - here.epoch)
            eps2, step2 = at(after)
            return eps + t * (eps2 - eps), step + t * (step2 - step)
    return at(points[-1])
