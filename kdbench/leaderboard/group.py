"""Group runs by setting, average seeds, rank.

A *setting* is what makes numbers comparable: (dataset, threat model norm and eps, teacher, student,
evaluation set, attack protocol), the teacher by its identity (recipe hash, checkpoint SHA-256, or zoo
name + file SHA-256) where the result records it. The evaluation set is result.json's
``evaluation.selection.eval_set_sha256`` (the decoded test split and the evaluated indices,
`kdbench.evaluation.selection`), the protocol its ``evaluation.protocol`` (step rule, starts, CW steps,
AutoAttack version; `kdbench.evaluation.record`). Runs that agree on the rest but were
evaluated on other images or with other attack rules get a board of their own, whose note says what
differs; results of an older kdbench that recorded neither form their own group ("not recorded").
Each board carries the teacher's own numbers (`Board.teacher_row`), shown above its students, and
ranks either every run's final model or its best-on-validation one (``select``).
Inside a setting, runs with the same variant key (`kdbench.leaderboard.collect.variant_key`: the
resolved recipe without its seed) form one *variant*, whose numbers are the mean over its seeds and
the sample standard deviation

    mean = (1/n) sum_i a_i,    std = sqrt( sum_i (a_i - mean)^2 / (n - 1) )     (std only for n >= 2)

of each accuracy a (fractions in [0, 1]), of the training time and of the analysis numbers
(`kdbench analyze`). Runs of one recipe that repeat a seed (the same recipe saved under two names)
are not independent seeds, so they stay apart, one variant per name. A metric a seed did not
evaluate is left out of that metric's mean (its ``n`` says how many seeds it averages).

A variant with a ``serious`` flag (result.json's ``flag_details``, `kdbench.evaluation.sanity.Flag`)
is marked unreliable, as RobustBench marks entries whose evaluation was broken: it keeps its rank,
but its numbers are not to be trusted.

Variants are ranked by the mean of one accuracy, ``autoattack`` by default. When AutoAttack was not
run for some variants of a setting, the variants with AutoAttack are ranked by it and the others
follow in a marked section of their own (`Variant.unranked`), ordered by PGD-20 but given no rank:
PGD-20 overestimates robustness, so a PGD-20 number is never ranked against AutoAttack ones (as
RobustBench lists only AutoAttack numbers). A setting where no variant has AutoAttack is ranked by
PGD-20 and says so (`Board.ranked_by`, `Board.note`). Any other metric can be asked for; variants
without it rank last. Ties go to the higher clean accuracy, then the label.

Two variants with the same label (one recipe name, two hashes: a ``--set`` changes the hash, not the
name) get the keys in which their resolved recipes differ appended to the label,
``kd_cifar10 [train.epochs=5]`` (`disambiguate`).
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
from kdbench.results import Metrics, Result

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
    "disambiguate",
    "run_metrics",
    "selected_metrics",
    "serious_flags",
    "train_device",
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


def selected_metrics(result: Result, select: str = "final") -> Metrics:
    """result.json's ``metrics`` of the final model, or with ``select="best_val"`` of the best-on-validation
    model (``metrics_best_val``; the final one's when it was the best, or without data.val_size)."""
    if select == "best_val" and result.metrics_best_val is not None:
        return result.metrics_best_val
    return result.metrics


def metric_values(metrics: Metrics) -> dict[str, float | None]:
    """The accuracies of one ``metrics`` table by leaderboard key (None when not evaluated)."""
    out: dict[str, float | None] = {"clean": float(metrics.clean_acc)}
    for key in METRICS[1:]:
        value = metrics.robust.get(key)
        out[key] = float(value) if value is not None else None
    return out


def run_metrics(result: Result, select: str = "final") -> dict[str, float | None]:
    """The accuracies of one result by leaderboard key (None when not evaluated)."""
    return metric_values(selected_metrics(result, select))


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


def _setting(result: Result) -> Setting:
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


def _teacher_row(setting: Setting, runs: Sequence[RunRecord]) -> Variant | None:
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


def train_device(result: Result) -> str | None:
    """What a run trained on, from result.json: ``env.device`` (``NVIDIA H200``, ``cpu (2 threads)``),
    prefixed ``4 x`` when ``cost.devices`` says it was a data-parallel run on several. None when not
    recorded. The one place the leaderboard reads the device."""
    env, cost = result.env, result.cost
    device = env.device if env is not None else None
    if not isinstance(device, str) or not device:
        device = cost.get("device") if isinstance(cost, dict) else None
        if not isinstance(device, str) or not device:
            return None
    count = cost.get("devices") if isinstance(cost, dict) else None
    return f"{count} x {device}" if isinstance(count, int) and not isinstance(count, bool) and count > 1 else device


def coverage_flag(result: Result) -> str | None:
    """A flag text when the recorded evaluation set misses classes of the dataset, else None."""
    selection = (result.evaluation or {}).get("selection")
    if not isinstance(selection, dict):
        return None
    covered, classes = selection.get("classes_covered"), selection.get("num_classes")
    if isinstance(covered, int) and isinstance(classes, int) and covered < classes:
        return f"evaluated on {covered} of {classes} classes: the accuracy is not the dataset's"
    return None


def serious_flags(result: Result) -> list[str]:
    """The messages of a result's serious flags (``flag_details`` entries with severity "serious"), and
    the class-coverage flag of its evaluation set when the result does not carry it already."""
    details = result.flag_details or []
    texts = [
        str(d.get("message"))
        for d in details
        if isinstance(d, dict) and d.get("severity") == "serious" and isinstance(d.get("message"), str)
    ]
    coverage = coverage_flag(result)
    if coverage and not any(isinstance(d, dict) and d.get("check") == "class_coverage" for d in details):
        texts.append(coverage)
    return texts


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


def _variant(key: str, runs: list[RunRecord], select: str = "final") -> Variant:
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
    from kdbench import _toml
    from kdbench._errors import UserError

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


def _split(key: str, runs: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Runs of one recipe that repeat a seed are not independent seeds: keep them apart by run name."""
    seeds = [r.seed for r in runs if r.seed is not None]
    if len(seeds) == len(set(seeds)):
        return [(key, runs)]
    by_name: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_name.setdefault(r.result.name, []).append(r)
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
            _variant(key, group, select) for k, runs_ in by_setting[setting].items() for key, group in _split(k, runs_)
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
                teacher_row=_teacher_row(setting, [r for group in by_setting[setting].values() for r in group]),
                selected=select,
            )
        )
    _note_split_settings(boards)
    return boards


def _note_split_settings(boards: list[Board]) -> None:
    """Boards of one base setting measured differently: each says what differs from the others."""
    by_base: dict[tuple[Any, ...], list[Board]] = {}
    for board in boards:
        by_base.setdefault(board.setting.base, []).append(board)
    for group in by_base.values():
        if len(group) < 2:
            continue
        for board in group:
            differs = []
            others = [b.setting for b in group if b is not board]
            if any(o.eval_set != board.setting.eval_set for o in others):
                differs.append("evaluation images")
            if any(o.protocol != board.setting.protocol for o in others):
                differs.append("attack settings")
            text = (
                f"Not ranked with {len(others)} other board(s) of this setting: they differ in {' and '.join(differs)}"
            )
            board.note = f"{board.note}. {text}" if board.note else text
