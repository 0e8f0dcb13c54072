"""The attacks an evaluation runs, by name: which names exist, the settings each runs with, its attack object.

The attacks (eps default 8/255 L-inf):

* ``fgsm``: one signed step of size eps from x (Goodfellow et al. 2015), L-inf only;
* ``pgd<k>``, e.g. ``pgd20``: k steps of alpha on the cross-entropy from a uniform start
  (Madry et al. 2018);
* ``cw``: PGD-30 with alpha, uniform start, on the CW margin ``max_{j!=y} z_j - z_y``
  (Carlini & Wagner 2017; the CW-inf of TRADES / RSLAD tables);
* ``autoattack``: standard AutoAttack through pyautoattack (`kdbench.evaluation.autoattack`);
* ``autoattack_custom``: AutoAttack's custom version with APGD-CE + APGD-T only (development; stored as
  ``robust.autoattack_custom``, never as ``autoattack``);
* ``clean`` is always evaluated.

Step size. Unless pinned (``step_size``, the recipe's ``eval.step_size``), the step of PGD-k and CW-k
scales with the budget: ``alpha = max(eps / 4, 2.5 * eps / k)`` (`default_step_size`). The second term
is Madry et al.'s rule that k steps can travel 2.5 eps, enough to cross the ball from a random start
whatever k; the first keeps the customary 2/255 of PGD-20 and CW-30 at 8/255 (RSLAD, ARD and TRADES
tables), so numbers at the standard budget stay comparable with the literature. A fixed 2/255 at
64/255 would leave PGD-20 unable to reach the ball's boundary (weaker than FGSM). The settings of
every attack (`attack_settings`) are result.json's ``evaluation.attacks``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from kdbench._errors import UserError, did_you_mean
from kdbench.attacks.base import Attack, Objective
from kdbench.attacks.cw import CWConfig, CWLinf
from kdbench.attacks.fgsm import FGSM, FGSMConfig
from kdbench.attacks.objectives import cross_entropy, cw_margin
from kdbench.attacks.pgd import PGD
from kdbench.attacks.threat import Norm, ThreatModelConfig
from kdbench.evaluation.autoattack import AUTOATTACK_VERSIONS

__all__ = [
    "ATTACK_NAMES",
    "CW_STEPS",
    "LINF_STEP",
    "MAX_PGD_STEPS",
    "STEP_RULE",
    "attack_settings",
    "build_attack",
    "check_attack_names",
    "default_step_size",
    "parse_attacks",
]

#: Attack names `kdbench.evaluation.evaluate` understands, besides ``pgd<k>`` for any k >= 1.
ATTACK_NAMES = ("clean", "fgsm", "pgd20", "cw", "autoattack", "autoattack_custom")
#: The L-inf step of PGD-20 and CW-30 at the CIFAR budget 8/255 (Madry et al. 2018; RSLAD eval): eps / 4.
LINF_STEP = 2 / 255
#: How the default step of PGD-k and CW-k follows from eps (`default_step_size`), as result.json states it.
STEP_RULE = "max(eps/4, 2.5*eps/steps)"
#: Steps of CW-inf (as in the RSLAD / ARD evaluation code).
CW_STEPS = 30
_PGD_NAME = re.compile(r"pgd(\d+)")
#: Beyond this an evaluation "attack" is a typo or a run that never ends (AutoAttack's APGD uses 100).
MAX_PGD_STEPS = 10_000


def parse_attacks(names: Sequence[str]) -> list[str]:
    """Validate and canonicalise attack names (lower case, ``pgd020`` -> ``pgd20``), dropping repeats."""
    if isinstance(names, str):
        names = [names]
    parsed: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        match = _PGD_NAME.fullmatch(name)
        if match:
            steps = int(match.group(1))
            if steps < 1 or steps > MAX_PGD_STEPS:
                raise UserError(f"evaluation attack {raw!r}: PGD takes 1 to {MAX_PGD_STEPS} steps (e.g. pgd20)")
            name = f"pgd{steps}"
        elif name not in ATTACK_NAMES:
            raise UserError(
                f"unknown evaluation attack {raw!r}; {did_you_mean(name, ATTACK_NAMES)}; or pgd<k> for PGD-k"
            )
        if name not in parsed:
            parsed.append(name)
    return parsed


def check_attack_names(names: Sequence[str]) -> None:
    """Raise `UserError` (with close matches) unless every name is a known evaluation attack (recipe check)."""
    parse_attacks(names)


def default_step_size(eps: float, steps: int) -> float:
    """``max(eps / 4, 2.5 * eps / steps)``: the step of PGD-k / CW-k scaled to the budget (module docstring)."""
    return max(eps / 4, 2.5 * eps / max(steps, 1))


def _steps(name: str) -> int:
    return CW_STEPS if name == "cw" else int(name.removeprefix("pgd"))


def attack_settings(
    names: Sequence[str], *, eps: float, norm: Norm, step_size: float | None = None
) -> dict[str, dict[str, Any]]:
    """What each attack of ``names`` runs with (result.json's ``evaluation.attacks``)."""
    settings: dict[str, dict[str, Any]] = {}
    for name in parse_attacks(names):
        if name == "clean":
            continue
        if name == "fgsm":
            settings[name] = {"steps": 1, "step_size": eps, "start": "none", "objective": "cross-entropy"}
        elif name in AUTOATTACK_VERSIONS:
            settings[name] = {"version": AUTOATTACK_VERSIONS[name], "package": "pyautoattack"}
        else:
            steps = _steps(name)
            settings[name] = {
                "steps": steps,
                "step_size": step_size if step_size is not None else default_step_size(eps, steps),
                "step_rule": "pinned" if step_size is not None else STEP_RULE,
                "start": "uniform",
                "restarts": 1,
                "objective": "cw-margin" if name == "cw" else "cross-entropy",
            }
    return settings


def build_attack(
    name: str, *, norm: Norm, eps: float, step_size: float | None = None
) -> tuple[Attack, Callable[[Tensor], Objective]]:
    """The attack object and the objective factory (labels -> objective) of a gradient attack name."""
    if name == "fgsm":
        if norm != "linf":
            raise UserError(f"fgsm is an L-inf attack; with norm {norm!r} evaluate pgd<k> instead")
        return FGSM(FGSMConfig(eps=eps)), cross_entropy
    steps = _steps(name)
    step = step_size if step_size is not None else default_step_size(eps, steps)
    if name == "cw":
        return CWLinf(CWConfig(norm=norm, eps=eps, step_size=step, steps=steps)), cw_margin
    config = ThreatModelConfig(norm=norm, eps=eps, step_size=step, steps=steps, random_start="uniform")
    return PGD(config), cross_entropy
