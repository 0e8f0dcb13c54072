"""What result.json and eval.json record about an evaluation, besides the accuracies.

``evaluation`` (one object, the same in both files)::

    {"selection": {rule, seed, n, split_size, num_classes, classes_covered, per_class,
                   split_sha256, indices_sha256, eval_set_sha256},       (kdbench.evaluation.selection)
     "attacks": {"pgd20": {steps, step_size, step_rule, start, restarts, objective}, "cw": {...},
                 "fgsm": {...}, "autoattack": {version, package}},
     "protocol": "<sha256[:16] of the attack rules>",
     "sanity": {"sample", "black_box_queries"}}

``protocol`` identifies how the attacks were configured, independent of eps (the leaderboard groups
by it): the step rule (or the pinned step), PGD's start and restarts, CW's steps and the AutoAttack
version. ``flag_details`` lists every flag as ``{check, severity, message, values}``
(`kdbench.evaluation.sanity.Flag`); ``flags`` keeps the plain messages.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kdbench.evaluation.sanity import Flag, check_class_coverage, flag_details
from kdbench.evaluation.selection import EvalSelection
from kdbench.evaluation.suite import BLACK_BOX_QUERIES, CW_STEPS, SANITY_SAMPLE, STEP_RULE, EvalReport

__all__ = ["attack_protocol", "evaluation_record", "selection_flags"]


def attack_protocol(step_size: float | None) -> str:
    """A short fingerprint of the attack rules (not of eps): equal protocols mean comparable attacks."""
    rules = {
        "step": STEP_RULE if step_size is None else f"pinned {step_size!r}",
        "pgd_start": "uniform",
        "restarts": 1,
        "cw_steps": CW_STEPS,
        "autoattack": "standard",
    }
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:16]


def selection_flags(selection: EvalSelection | None) -> list[Flag]:
    """The flags of the evaluation set itself (classes missing from it)."""
    return check_class_coverage(selection.per_class) if selection is not None else []


def evaluation_record(report: EvalReport, selection: EvalSelection | None, step_size: float | None) -> dict[str, Any]:
    """``{"evaluation": ..., "flag_details": ...}`` for ``report`` (see the module docstring)."""
    return {
        "evaluation": {
            "selection": selection.to_dict() if selection is not None else None,
            "attacks": report.settings,
            "protocol": attack_protocol(step_size),
            "sanity": {"sample": min(SANITY_SAMPLE, report.n_eval), "black_box_queries": BLACK_BOX_QUERIES},
        },
        "flag_details": flag_details(report.flags),
    }
