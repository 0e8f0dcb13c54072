"""Group runs by setting, average seeds, rank.

A *setting* is what makes numbers comparable: (dataset, threat model norm and eps, teacher, student),
the teacher by its identity (recipe hash, checkpoint SHA-256, or zoo name + file SHA-256) where the
result records it. Each board carries the teacher's own numbers (`Board.teacher_row`), shown above its
students, and ranks either every run's final model or its best-on-validation one (``select``).
Inside a setting, runs with the same variant key (`kdbench.leaderboard.collect.variant_key`: the
resolved recipe without its seed) form one *variant*, whose numbers are the mean over its seeds and
the sample standard deviation

    mean = (1/n) sum_i a_i,    std = sqrt( sum_i (a_i - mean)^2 / (n - 1) )     (std only for n >= 2)

of each accuracy a (fractions in [0, 1]), of the training time and of the analysis numbers
(`kdbench analyze`). Runs of one recipe that repeat a seed (the same recipe saved under two names)
are not independent seeds, so they stay apart, one variant per name. A metric a seed did not
evaluate is left out of that metric's mean (its ``n`` says how many seeds it averages).

Variants are ranked by the mean of one accuracy, ``autoattack`` by default. When AutoAttack was not
run for every variant of a setting, comparing AutoAttack with nothing would be meaningless, so that
setting is ranked by PGD-20 instead and says so (`Board.ranked_by`, `Board.note`). Any other metric
can be asked for; variants without it rank last. Ties go to the higher clean accuracy, then the
label.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kdbench.leaderboard.collect import RunRecord

__all__ = [
    "ANALYSIS_KEYS",
    "METRICS",
    "METRIC_LABELS",
    "SELECTIONS",
    "SORT_KEYS",
    "Board",
    "Setting",
    "Stat",
    "Variant",
    "build_boards",
    "run_metrics",
    "selected_metrics",
]

#: Accuracies shown, in column order (``clean`` is ``metrics.clean_acc``, the rest ``metrics.robust``).
METRICS = ("clean", "fgsm", "pgd20", "cw", "autoattack", "worst")
METRIC_LABELS = {
    "clean": "Clean",
    "fgsm": "FGSM",
    "pgd20": "PGD-20",
    "cw": "CW",
    "autoattack": "AutoAttack",
    "worst": "worst",
}
SORT_KEYS = ("autoattack", "pgd20", "clean", "cw", "fgsm", "worst")
#: Numbers `kdbench analyze` writes under result.json's "analysis", with their column headers.
ANALYSIS_KEYS = {
    "cka_clean": "CKA",
    "cka_adv": "CKA adv",
    "class_corr_distance": "corr. dist.",
    "feature_change": "feat. change",
}
_SEED_SUFFIX = re.compile(r"[-_.+](seed|s)[-_]?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None for fewer than 2 values) of the values of the seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


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
        return f"{self.dataset} · {self.norm} eps {self.eps} · {teacher} · student {self.student}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "threat_model": {"norm": self.norm, "eps": self.eps},
            "teacher": self.teacher,
            "teacher_id": self.teacher_id,
            "student": self.student,
        }


@dataclass
class Variant:
    """The runs of one recipe over its seeds, with their aggregated numbers."""

    key: str
    label: str
    method: str
    runs: list[RunRecord]
    metrics: dict[str, Stat]
    analysis: dict[str, Stat]
    train_seconds: Stat
    params: int | None
    flags: list[tuple[int | None, str]]  # (seed, text) of every flag raised, in seed order
    n_eval: list[int]
    rank: int = 0

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    @property
    def flag_texts(self) -> list[str]:
        """Distinct flag texts (one flag raised by several seeds counts once)."""
        return list(dict.fromkeys(text for _, text in self.flags))

    def mean(self, metric: str) -> float | None:
        stat = self.metrics.get(metric) or self.analysis.get(metric)
        return stat.mean if stat is not None else None


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


#: Which model of a run the leaderboard ranks (`build_boards`'s ``select``).
SELECTIONS = ("final", "best_val")


def selected_metrics(result: dict[str, Any], select: str = "final") -> dict[str, Any]:
    """result.json's ``metrics`` of the final model, or with ``select="best_val"`` of the best-on-validation
    model (``metrics_best_val``; the final one's when it was the best, or without data.val_size)."""
    if select == "best_val" and isinstance(result.get("metrics_best_val"), dict):
        return dict(result["metrics_best_val"])
    return dict(result.get("metrics") or {})


def run_metrics(result: dict[str, Any], select: str = "final") -> dict[str, float | None]:
    """The accuracies of one result.json by leaderboard key (None when not evaluated)."""
    metrics = selected_metrics(result, select)
    robust = metrics.get("robust") or {}
    out: dict[str, float | None] = {"clean": metrics.get("clean_acc")}
    for key in METRICS[1:]:
        value = robust.get(key)
        out[key] = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return out


def _setting(result: dict[str, Any]) -> Setting:
    threat = result["threat_model"]
    source = result.get("teacher_source")
    teacher_id = source.get("key") if isinstance(source, dict) and isinstance(source.get("key"), str) else None
    return Setting(
        result["dataset"], str(threat["norm"]), str(threat["eps"]), result.get("teacher"), result["student"], teacher_id
    )


def _teacher_row(setting: Setting, runs: Sequence[RunRecord]) -> Variant | None:
    """The teacher's own numbers as a row: from the first run (in file order) that recorded them. Runs of one
    teacher measure it on the same examples (cached), so they agree; a differing count of examples is kept."""
    for run in runs:
        metrics = run.result.get("teacher_metrics")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("clean_acc"), int | float):
            continue
        values = run_metrics({"metrics": metrics})
        n_eval = metrics.get("n_eval")
        flags: list[tuple[int | None, str]] = [(None, str(f)) for f in run.result.get("teacher_flags") or []]
        return Variant(
            key=f"teacher:{setting.teacher_id}",
            label=f"teacher {setting.teacher or '?'}",
            method="(teacher)",
            runs=[],
            metrics={m: Stat((v,) if (v := values[m]) is not None else ()) for m in METRICS},
            analysis={},
            train_seconds=Stat(()),
            params=(run.result.get("params") or {}).get("teacher"),
            flags=flags,
            n_eval=[n_eval] if isinstance(n_eval, int) else [],
        )
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _without_seed(name: str, seed: int | None) -> str:
    """``kd-seed1`` / ``kd_s1`` -> ``kd`` when 1 is the run's seed (a suffix naming another number stays)."""
    match = _SEED_SUFFIX.search(name)
    if match and seed is not None and int(match.group(2)) == seed and match.start() > 0:
        return name[: match.start()]
    return name


def _label(runs: Sequence[RunRecord]) -> str:
    """The runs' common name without a suffix naming the seed (``-seed1``, ``_s2``), else their common prefix."""
    names = [str(run.result["name"]) for run in runs]
    stripped = {_without_seed(name, run.seed) for name, run in zip(names, runs, strict=True)}
    if len(stripped) == 1:
        return stripped.pop()
    # A [sweep] names its variants "<name>-<value>-<value>"; drop the parts that differ and spell the seed.
    parts = [name.split("-") for name in names]
    if len({len(p) for p in parts}) == 1:
        varying = [i for i in range(len(parts[0])) if len({p[i] for p in parts}) > 1]
        seeds_only = all(p[i] == str(run.seed) for i in varying for p, run in zip(parts, runs, strict=True))
        if seeds_only and len(varying) < len(parts[0]):
            return "-".join(part for i, part in enumerate(parts[0]) if i not in varying)
    prefix = ""
    for chars in zip(*names, strict=False):
        if len(set(chars)) != 1:
            break
        prefix += chars[0]
    prefix = prefix.rstrip("-_.+")
    return prefix or sorted(names)[0]


def _variant(key: str, runs: list[RunRecord], select: str = "final") -> Variant:
    runs = sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, str(r.result_file)))
    per_run = [run_metrics(r.result, select) for r in runs]
    metrics = {m: Stat(tuple(v for p in per_run if (v := p[m]) is not None)) for m in METRICS}
    analysis: dict[str, Stat] = {}
    for akey in ANALYSIS_KEYS:
        values = tuple(v for r in runs if (v := _number((r.result.get("analysis") or {}).get(akey))) is not None)
        if values:
            analysis[akey] = Stat(values)
    seconds = tuple(v for r in runs if (v := _number((r.result.get("train") or {}).get("seconds"))) is not None)
    params = [p for r in runs if isinstance(p := (r.result.get("params") or {}).get("student"), int)]
    flags = [(r.seed, str(text)) for r in runs for text in r.result.get("flags", [])]
    n_eval = [n for r in runs if isinstance(n := selected_metrics(r.result, select).get("n_eval"), int)]
    methods = sorted({str(r.result["method"]) for r in runs})
    return Variant(
        key=key,
        label=_label(runs),
        method=", ".join(methods),
        runs=runs,
        metrics=metrics,
        analysis=analysis,
        train_seconds=Stat(seconds),
        params=max(params) if params else None,
        flags=flags,
        n_eval=n_eval,
    )


def _split(key: str, runs: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Runs of one recipe that repeat a seed are not independent seeds: keep them apart by run name."""
    seeds = [r.seed for r in runs if r.seed is not None]
    if len(seeds) == len(set(seeds)):
        return [(key, runs)]
    by_name: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_name.setdefault(str(r.result["name"]), []).append(r)
    return [(f"{key}:{name}", group) for name, group in by_name.items()]


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
        by_setting.setdefault(_setting(run.result), {}).setdefault(run.variant_key, []).append(run)
    boards = []
    for setting in sorted(
        by_setting,
        key=lambda s: (s.dataset, s.norm, s.eps_value, s.eps, s.teacher or "", s.teacher_id or "", s.student),
    ):
        variants = [
            _variant(key, group, select) for k, runs_ in by_setting[setting].items() for key, group in _split(k, runs_)
        ]
        ranked_by, note = sort, ""
        if sort == "autoattack" and any(v.mean("autoattack") is None for v in variants):
            ranked_by = "pgd20"
            missing = sum(v.mean("autoattack") is None for v in variants)
            note = (
                f"AutoAttack was not run for {missing} of {len(variants)} variants: ranked by PGD-20, "
                "which overestimates robustness"
            )
        elif any(v.mean(sort) is None for v in variants):
            note = f"{METRIC_LABELS[sort]} missing for some variants: they rank last"
        boards.append(
            Board(
                setting=setting,
                variants=_rank(variants, ranked_by),
                requested=sort,
                ranked_by=ranked_by,
                note=note,
                has_analysis=any(v.analysis for v in variants),
                teacher_row=_teacher_row(setting, [r for group in by_setting[setting].values() for r in group]),
                selected=select,
            )
        )
    return boards
