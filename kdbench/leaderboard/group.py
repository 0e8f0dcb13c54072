"""Group runs into boards, one per setting, and rank each board's variants.

`build_boards` groups the runs by setting (`kdbench.leaderboard.setting`: what makes numbers comparable)
and, within one, into variants, the seeds of one recipe, averaged (`kdbench.leaderboard.variant`). Each
board carries the teacher's own numbers (`Board.teacher_row`), shown above its students, and ranks either
every run's final model or its best-on-validation one (``select``).

Variants are ranked by the mean of one accuracy, ``autoattack`` by default. When AutoAttack was not
run for some variants of a setting, the variants with AutoAttack are ranked by it and the others
follow in a marked section of their own (`Variant.unranked`), ordered by PGD-20 but given no rank:
PGD-20 overestimates robustness, so a PGD-20 number is never ranked against AutoAttack ones (as
RobustBench lists only AutoAttack numbers). A setting where no variant has AutoAttack is ranked by
PGD-20 and says so (`Board.ranked_by`, `Board.note`). Any other metric can be asked for; variants
without it rank last. Ties go to the higher clean accuracy, then the label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kdbench.leaderboard.collect import RunRecord
from kdbench.leaderboard.readings import METRIC_LABELS, SELECTIONS
from kdbench.leaderboard.setting import Setting, setting_of, split_notes, split_repeated_seeds
from kdbench.leaderboard.variant import Variant, build_variant, disambiguate, teacher_row

__all__ = ["SORT_KEYS", "Board", "build_boards"]

SORT_KEYS = ("autoattack", "pgd20", "clean", "cw", "fgsm", "worst")


@dataclass
class Board:
    """The ranked variants of one setting."""

    setting: Setting
    variants: list[Variant]
    requested: str
    ranked_by: str
    note: str = ""
    has_analysis: bool = field(default=False)
    #: The teacher's own numbers (result.json ``teacher_metrics``, kdbench's evaluation on the students'
    #: examples), shown above its students; None when no run recorded them.
    teacher_row: Variant | None = None
    #: Which weights of each run are ranked: "final" or "best_val" (data.val_size's best-on-validation).
    selected: str = "final"

    @property
    def runs(self) -> int:
        return sum(len(v.runs) for v in self.variants)


def _rank(variants: list[Variant], metric: str) -> list[Variant]:
    def key(v: Variant) -> tuple[Any, ...]:
        value = v.mean(metric)
        clean = v.mean("clean")
        return (value is None, -(value or 0.0), -(clean or 0.0), v.label, v.key)

    ranked = sorted(variants, key=key)
    for i, v in enumerate(ranked, 1):
        v.rank = i
    return ranked


def build_boards(runs: Iterable[RunRecord], sort: str = "autoattack", select: str = "final") -> list[Board]:
    """One ranked `Board` per setting, settings in (dataset, norm, eps, teacher, student) order.

    ``select`` picks the weights ranked: the final model of each run, or its best-on-validation model."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {SORT_KEYS}, got {sort!r}")
    if select not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
    by_setting: dict[Setting, dict[str, list[RunRecord]]] = {}
    for run in runs:
        by_setting.setdefault(setting_of(run.result), {}).setdefault(run.variant_key, []).append(run)
    boards = []
    for setting in sorted(
        by_setting,
        key=lambda s: (
            s.dataset,
            s.norm,
            s.eps_value,
            s.eps,
            s.teacher or "",
            s.teacher_id or "",
            s.student,
            s.eval_set,
            s.protocol,
        ),
    ):
        variants = [
            build_variant(key, group, select)
            for k, runs_ in by_setting[setting].items()
            for key, group in split_repeated_seeds(k, runs_)
        ]
        disambiguate(variants)
        ranked_by, note = sort, ""
        without = [v for v in variants if v.mean("autoattack") is None]
        ordered: list[Variant] | None = None
        if sort == "autoattack" and without and len(without) < len(variants):
            ordered = _rank([v for v in variants if v.mean("autoattack") is not None], "autoattack")
            for v in _rank(without, "pgd20"):
                v.unranked = True
                ordered.append(v)
            for i, v in enumerate(ordered, 1):
                v.rank = i
            note = (
                f"AutoAttack was not run for {len(without)} of {len(variants)} variants: they follow the ranked "
                "ones, marked † and unranked, ordered by PGD-20 (which overestimates robustness)"
            )
        elif sort == "autoattack" and without:
            ranked_by = "pgd20"
            note = "AutoAttack was not run for any variant: ranked by PGD-20, which overestimates robustness"
        elif any(v.mean(sort) is None for v in variants):
            note = f"{METRIC_LABELS[sort]} missing for some variants: they rank last"
        boards.append(
            Board(
                setting=setting,
                variants=ordered if ordered is not None else _rank(variants, ranked_by),
                requested=sort,
                ranked_by=ranked_by,
                note=note,
                has_analysis=any(v.analysis for v in variants),
                teacher_row=teacher_row(setting, [r for group in by_setting[setting].values() for r in group]),
                selected=select,
            )
        )
    for board, text in zip(boards, split_notes([b.setting for b in boards]), strict=True):
        if text:  # boards of one base setting measured differently: each says what differs from the others
            board.note = f"{board.note}. {text}" if board.note else text
    return boards
