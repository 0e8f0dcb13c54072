"""A variant: the runs of one recipe over its seeds, their numbers aggregated, under a label of its own.

A variant's numbers (`build_variant`) are the mean over its seeds and the sample standard deviation

    mean = (1/n) sum_i a_i,    std = sqrt( sum_i (a_i - mean)^2 / (n - 1) )     (std only for n >= 2)

of each accuracy a (fractions in [0, 1]), of the training time and of the analysis numbers
(`kdbench analyze`). A metric a seed did not evaluate is left out of that metric's mean (its ``n`` says
how many seeds it averages). Which runs form a variant: `kdbench.leaderboard.setting`.

A variant with a serious flag for some seed (`kdbench.leaderboard.readings.serious_flags`) is marked
unreliable, as RobustBench marks entries whose evaluation was broken: it keeps its rank, but its numbers
are not to be trusted.

Its label is the runs' common name without a suffix naming the seed. Two variants with the same label
(one recipe name, two hashes: a ``--set`` changes the hash, not the name) get the keys in which their
resolved recipes differ appended to the label, ``kd_cifar10 [train.epochs=5]`` (`disambiguate`).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdbench import _toml
from kdbench._errors import UserError
from kdbench.leaderboard.collect import RunRecord
from kdbench.leaderboard.readings import (
    ANALYSIS_KEYS,
    METRICS,
    coverage_flag,
    metric_values,
    run_metrics,
    selected_metrics,
    serious_flags,
    train_device,
)
from kdbench.leaderboard.setting import Setting

__all__ = ["Stat", "Variant", "build_variant", "disambiguate", "teacher_row"]

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
    serious: list[str] = field(default_factory=list)  # distinct texts of the serious flags
    #: True for a variant listed after the ranked ones, without a rank (no AutoAttack; module doc).
    unranked: bool = False

    @property
    def unreliable(self) -> bool:
        """A serious flag was raised for some seed: the numbers are not to be trusted."""
        return bool(self.serious)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    @property
    def train_devices(self) -> list[str]:
        """The distinct devices its seeds trained on (`train_device`), in seed order."""
        return list(dict.fromkeys(d for r in self.runs if (d := train_device(r.result)) is not None))

    @property
    def flag_texts(self) -> list[str]:
        """Distinct flag texts (one flag raised by several seeds counts once)."""
        return list(dict.fromkeys(text for _, text in self.flags))

    def mean(self, metric: str) -> float | None:
        stat = self.metrics.get(metric) or self.analysis.get(metric)
        return stat.mean if stat is not None else None


def teacher_row(setting: Setting, runs: Sequence[RunRecord]) -> Variant | None:
    """The teacher's own numbers as a row: from the first run (in file order) that recorded them. Runs of one
    teacher measure it on the same examples (cached), so they agree; a differing count of examples is kept."""
    for run in runs:
        metrics = run.result.teacher_metrics
        if metrics is None:
            continue
        values = metric_values(metrics)
        n_eval = metrics.n_eval
        flags: list[tuple[int | None, str]] = [(None, str(f)) for f in run.result.teacher_flags or []]
        return Variant(
            key=f"teacher:{setting.teacher_id}",
            label=f"teacher {setting.teacher or '?'}",
            method="(teacher)",
            runs=[],
            metrics={m: Stat((v,) if (v := values[m]) is not None else ()) for m in METRICS},
            analysis={},
            train_seconds=Stat(()),
            params=(run.result.params or {}).get("teacher"),
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
    names = [run.result.name for run in runs]
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


def build_variant(key: str, runs: list[RunRecord], select: str = "final") -> Variant:
    """The variant of ``runs`` (seeds of one recipe), its numbers those of the ``select``-ed model of each."""
    runs = sorted(runs, key=lambda r: (r.seed is None, r.seed or 0, str(r.result_file)))
    per_run = [run_metrics(r.result, select) for r in runs]
    metrics = {m: Stat(tuple(v for p in per_run if (v := p[m]) is not None)) for m in METRICS}
    analysis: dict[str, Stat] = {}
    for akey in ANALYSIS_KEYS:
        values = tuple(v for r in runs if (v := _number((r.result.analysis or {}).get(akey))) is not None)
        if values:
            analysis[akey] = Stat(values)
    seconds = tuple(
        v for r in runs if r.result.train is not None and (v := _number(r.result.train.seconds)) is not None
    )
    params = [p for r in runs if isinstance(p := (r.result.params or {}).get("student"), int)]
    flags = [(r.seed, str(text)) for r in runs for text in r.result.flags]
    flags += [(r.seed, text) for r in runs if (text := coverage_flag(r.result)) and text not in dict(flags).values()]
    n_eval = [n for r in runs if (n := selected_metrics(r.result, select).n_eval) is not None]
    methods = sorted({r.result.method for r in runs})
    serious = list(dict.fromkeys(text for r in runs for text in serious_flags(r.result)))
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
        serious=serious,
    )


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flat(value, dotted))
        else:
            out[dotted] = value
    return out


def _recipe_of(variant: Variant) -> dict[str, Any]:
    """The resolved recipe of a variant's first run (its recipe.toml), flattened to dotted keys."""
    run = variant.runs[0]
    if run.recipe_file is None:
        return {}
    try:
        return _flat(_toml.load_file(run.recipe_file))
    except UserError:
        return {}


def disambiguate(variants: list[Variant], most: int = 3) -> None:
    """Append ``[key=value, ...]`` (the recipe keys that differ, at most ``most``) to labels that repeat;
    without recipe files, the recipe hash."""
    by_label: dict[str, list[Variant]] = {}
    for v in variants:
        by_label.setdefault(v.label, []).append(v)
    for same in by_label.values():
        if len(same) < 2:
            continue
        recipes = [_recipe_of(v) for v in same]
        keys = sorted({k for r in recipes for k in r} - {"name", "seed", "description"})
        differing = [k for k in keys if len({repr(r.get(k)) for r in recipes}) > 1]
        for v, recipe in zip(same, recipes, strict=True):
            if differing and recipe:
                shown = [f"{k}={recipe.get(k, '-')}" for k in differing[:most]]
                more = f", +{len(differing) - most}" if len(differing) > most else ""
                v.label = f"{v.label} [{', '.join(shown)}{more}]"
            else:
                v.label = f"{v.label} [{v.runs[0].result.short_hash}]"
