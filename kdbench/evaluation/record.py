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
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kdbench._errors import UserError
from kdbench.engine.checkpoint import atomic_write_bytes
from kdbench.evaluation.attack_setup import CW_STEPS, STEP_RULE
from kdbench.evaluation.report import EvalReport
from kdbench.evaluation.sanity import Flag, check_class_coverage, flag_details
from kdbench.evaluation.selection import EvalSelection
from kdbench.evaluation.suite import BLACK_BOX_QUERIES, SANITY_SAMPLE
from kdbench.folder_teacher import folder_teacher_identity
from kdbench.results import SCHEMA_VERSION, read_result
from kdbench.run_folder import RunFolder
from kdbench.teachers import TeacherIdentity

__all__ = ["attack_protocol", "evaluation_record", "recorded_teacher", "selection_flags", "update_result"]


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


def update_result(run: Path, evaluation: dict[str, Any], teacher: TeacherIdentity | None = None) -> str | None:
    """Write ``evaluation`` (eval.json's content) into the run's result.json, keeping the old file.

    Replaces ``threat_model``, ``metrics``, ``flags``, ``flag_details`` and ``evaluation``, and records
    ``reevaluated`` (kdbench version, git commit, when); everything else (training, params, analysis,
    env of the training) stays. A result written before ``teacher_source`` existed also gets the
    teacher's identity: ``teacher`` (`recorded_teacher`, from ``--teacher``), else derived from the
    folder (`kdbench.folder_teacher`); marked ``"derived"``, so the leaderboard can rank the result beside
    today's runs of that teacher. Its key is returned (None when nothing was added). The original is
    copied to result.json.orig once (never overwritten).
    """
    folder = RunFolder(run)
    result = read_result(folder.result_file)
    if result is None:
        raise UserError(
            f"{folder.result_file}: missing or not a result.json of schema_version {SCHEMA_VERSION}; nothing to update"
        )
    if not folder.original_result_file.exists():
        atomic_write_bytes(folder.original_result_file, folder.result_file.read_bytes())
    env = evaluation.get("env", {})
    changes = {key: evaluation[key] for key in ("threat_model", "metrics", "flags", "flag_details", "evaluation")}
    changes["reevaluated"] = {
        "kdbench": env.get("kdbench"),
        "git_commit": env.get("git_commit"),
        "device": env.get("device"),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": evaluation.get("seconds", {}).get("total"),
    }
    added = None
    if result.teacher is not None and result.teacher_source is None:
        how = "--teacher" if teacher is not None else "the run folder"
        if teacher is None:
            try:
                teacher = folder_teacher_identity(folder)
            except UserError as exc:  # the evaluation is still written; only the teacher stays unidentified
                print(f"kdbench: teacher identity not recorded: {exc}", file=sys.stderr)
        if teacher is not None:
            changes["teacher_source"] = {**teacher.to_dict(), "derived": how}
            added = teacher.key
    result.updated(**changes).write(folder.result_file)
    return added


def recorded_teacher(run: Path, given: Path) -> TeacherIdentity | None:
    """The identity ``--teacher given`` gives the run's teacher, checked before anything is evaluated: the
    teacher must fit the folder's recipe (`kdbench.folder_teacher`), and a result that records its teacher
    must record this one. None when the result already records it (nothing to add)."""
    folder = RunFolder(run)
    identity = folder_teacher_identity(folder, given)
    if identity is None:
        raise UserError(f"--teacher: {folder.recipe_file} names no teacher recipe or weights file to identify")
    result = read_result(folder.result_file)
    recorded = result.teacher_source if result is not None else None
    if recorded is not None:
        if recorded.get("key") != identity.key:
            raise UserError(
                f"--teacher {given} is {identity.key}, but {folder.result_file} records teacher {recorded.get('key')}; "
                "drop --teacher"
            )
        return None
    return identity
