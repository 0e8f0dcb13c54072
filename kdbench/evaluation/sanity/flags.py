"""Flags: a message with its check's name, its severity and its numbers (result.json ``flag_details``),
and the thresholds the checks share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

#: Slack of accuracy comparisons between attacks run with different randomness (1 point).
ATTACK_TOLERANCE = 0.01
#: How much weaker than FGSM a multi-step attack may be before it hints at gradient masking (5 points).
MASKING_TOLERANCE = 0.05
#: PGD step counts compared by `check_steps_monotone` (same eps, step size, start and seed).
STEPS_CHECK_STEPS = (10, 20, 50)
#: The L-inf step size of the evaluation's PGD (`kdbench.evaluation.attack_setup.LINF_STEP`); L2 uses eps / 4.
_LINF_STEP = 2 / 255
#: Share of points with an all-zero (or non-finite) input gradient above which gradients are masked.
ZERO_GRADIENT_SHARE = 0.05
#: A gap beyond noise this large (5 points) between two attacks is serious, not a warning: honest
#: adversarially trained CIFAR models lose 1-4 points from PGD-20 to AutoAttack (RobustBench).
SERIOUS_GAP = 0.05
#: Robust accuracy allowed at an unbounded eps (every image reachable): 5 % of the sample, at least 1 image.
UNBOUNDED_TOLERANCE = 0.05

Severity = Literal["serious", "warning"]
SERIOUS: Severity = "serious"
WARNING: Severity = "warning"


class Flag(str):
    """A sanity flag: its message (the str itself), the ``check`` that raised it, a ``severity`` and ``values``.

    A str subclass, so code and files that treat flags as strings keep working; `flag_details` gives
    the structured form stored in result.json's ``flag_details``.
    """

    check: str
    severity: Severity
    values: dict[str, Any]

    def __new__(
        cls, message: str, *, check: str, severity: Severity = SERIOUS, values: Mapping[str, Any] | None = None
    ) -> Self:
        flag = super().__new__(cls, message)
        flag.check = check
        flag.severity = severity
        flag.values = dict(values or {})
        return flag

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "message": str(self), "values": self.values}


def as_flag(text: str, *, check: str = "other", severity: Severity = WARNING) -> Flag:
    """``text`` as a `Flag` (unchanged when it already is one)."""
    return text if isinstance(text, Flag) else Flag(text, check=check, severity=severity)


def flag_details(flags: Sequence[str]) -> list[dict[str, Any]]:
    """result.json's ``flag_details``: one ``{check, severity, message, values}`` per flag (plain strings: warnings)."""
    return [as_flag(f).to_dict() for f in flags]
