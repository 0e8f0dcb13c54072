"""What makes two results comparable: the setting a board ranks within, and which runs are seeds of one variant.

A *setting* is what makes numbers comparable: (dataset, threat model norm and eps, teacher, student,
evaluation set, attack protocol), the teacher by its identity (recipe hash, checkpoint SHA-256, or zoo
name + file SHA-256) where the result records it. The evaluation set is result.json's
``evaluation.selection.eval_set_sha256`` (the decoded test split and the evaluated indices,
`kdbench.evaluation.selection`), the protocol its ``evaluation.protocol`` (step rule, starts, CW steps,
AutoAttack version; `kdbench.evaluation.record`). Runs that agree on the rest (`Setting.base`) but were
evaluated on other images or with other attack rules get a board of their own, whose note says what
differs (`split_notes`); results of an older kdbench that recorded neither form their own group ("not
recorded").

Inside a setting, runs with the same variant key (`kdbench.leaderboard.collect.variant_key`: the
resolved recipe without its seed) are seeds of one variant. Runs of one recipe that repeat a seed (the
same recipe saved under two names) are not independent seeds, so they stay apart, one variant per name
(`split_repeated_seeds`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kdbench.leaderboard.collect import RunRecord
from kdbench.results import Result

__all__ = ["Setting", "setting_of", "split_notes", "split_repeated_seeds"]


@dataclass(frozen=True)
class Setting:
    """What a ranking compares within: dataset, threat model, teacher and student."""

    dataset: str
    norm: str
    eps: str
    teacher: str | None
    student: str
    #: The teacher's identity (`kdbench.teachers.TeacherIdentity.key`): students of different weights of
    #: the same architecture are not comparable. None for results written before it was recorded.
    teacher_id: str | None = None
    eval_set: str = ""  # evaluation.selection.eval_set_sha256 ("" when not recorded)
    eval_desc: str = ""  # e.g. "stratified, n=500, 10/10 classes"
    protocol: str = ""  # evaluation.protocol ("" when not recorded)

    @property
    def base(self) -> tuple[str, str, str, str | None, str, str | None]:
        """The setting without its evaluation set and protocol."""
        return (self.dataset, self.norm, self.eps, self.teacher, self.student, self.teacher_id)

    @property
    def eps_value(self) -> float:
        try:
            return float(Fraction(self.eps))
        except (ValueError, ZeroDivisionError):
            return math.nan

    def label(self) -> str:
        teacher = f"teacher {self.teacher}" if self.teacher else "no teacher"
        if self.teacher_id and self.teacher_id != self.teacher:
            teacher += f" [{self.teacher_id}]"
        images = f"eval {self.eval_desc} [{self.eval_set[:8]}]" if self.eval_set else "eval set not recorded"
        return f"{self.dataset} · {self.norm} eps {self.eps} · {teacher} · student {self.student} · {images}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "threat_model": {"norm": self.norm, "eps": self.eps},
            "teacher": self.teacher,
            "teacher_id": self.teacher_id,
            "student": self.student,
            "eval_set": self.eval_set or None,
            "eval_set_description": self.eval_desc or None,
            "protocol": self.protocol or None,
        }


def _evaluation(result: Result) -> tuple[str, str, str]:
    """``(eval_set, description, protocol)`` from result.json's ``evaluation`` ("" when not recorded)."""
    evaluation = result.evaluation
    if not isinstance(evaluation, dict):
        return "", "", ""
    selection = evaluation.get("selection")
    eval_set, desc = "", ""
    if isinstance(selection, dict) and isinstance(selection.get("eval_set_sha256"), str):
        eval_set = selection["eval_set_sha256"]
        desc = f"{selection.get('rule')}, n={selection.get('n')}"
        covered, classes = selection.get("classes_covered"), selection.get("num_classes")
        if isinstance(covered, int) and isinstance(classes, int):
            desc += f", {covered}/{classes} classes"
    protocol = evaluation.get("protocol")
    return eval_set, desc, protocol if isinstance(protocol, str) else ""


def setting_of(result: Result) -> Setting:
    """The setting one result was measured in."""
    threat = result.threat_model
    source = result.teacher_source
    teacher_id = source.get("key") if isinstance(source, dict) and isinstance(source.get("key"), str) else None
    eval_set, desc, protocol = _evaluation(result)
    return Setting(
        result.dataset,
        str(threat.norm),
        str(threat.eps),
        result.teacher,
        result.student,
        teacher_id=teacher_id,
        eval_set=eval_set,
        eval_desc=desc,
        protocol=protocol,
    )


def split_repeated_seeds(key: str, runs: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """The variants of the runs of one variant key: all of them, or, when they repeat a seed (not independent
    seeds), one per run name, keyed ``<key>:<name>``."""
    seeds = [r.seed for r in runs if r.seed is not None]
    if len(seeds) == len(set(seeds)):
        return [(key, runs)]
    by_name: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_name.setdefault(r.result.name, []).append(r)
    return [(f"{key}:{name}", group) for name, group in by_name.items()]


def split_notes(settings: Sequence[Setting]) -> list[str]:
    """Per setting (distinct ones, one per board), what it differs in from the others of its base setting
    ("" when it is the only one): those boards are measured differently and not ranked together."""
    by_base: dict[tuple[Any, ...], list[int]] = {}
    for i, setting in enumerate(settings):
        by_base.setdefault(setting.base, []).append(i)
    notes = [""] * len(settings)
    for group in by_base.values():
        if len(group) < 2:
            continue
        for i in group:
            differs = []
            others = [settings[j] for j in group if j != i]
            if any(o.eval_set != settings[i].eval_set for o in others):
                differs.append("evaluation images")
            if any(o.protocol != settings[i].protocol for o in others):
                differs.append("attack settings")
            notes[i] = (
                f"Not ranked with {len(others)} other board(s) of this setting: they differ in {' and '.join(differs)}"
            )
    return notes
