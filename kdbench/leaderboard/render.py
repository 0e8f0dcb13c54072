"""The cells, headers and titles of a leaderboard (the formats that print them: `kdbench.leaderboard.formats`
and `kdbench.leaderboard.html`).

Accuracies are shown as percentages (``52.31 ± 0.42``: mean ± sample std over seeds, the std only
with two seeds or more) in the table and Markdown; CSV and JSON keep result.json's fractions in
[0, 1], mean and std in separate fields, so nothing is lost to rounding. The column of the metric a
board is ranked by is marked ``▼``.

Columns (``--columns``): the accuracies ``clean fgsm pgd20 cw autoattack worst``, ``params`` (the
student's parameter count), ``time`` (mean training wall time and the device it ran on), ``flags``
(how many distinct sanity flags the evaluation raised; Markdown lists their texts), ``seeds`` (how
many seeds the variant averages), and the `kdbench analyze` numbers ``cka_clean cka_adv
class_corr_distance feature_change``. By default every column but the analysis ones, which are added
when any run has them.

A variant with a serious sanity flag (gradient masking, a randomised model, an evaluation set that
misses classes...) keeps its rank but its label is marked ``⚠ unreliable`` (CSV: column
``unreliable``; JSON: ``unreliable`` and ``serious_flags``), as RobustBench marks broken evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence

from kdbench._errors import UserError, did_you_mean
from kdbench.leaderboard.group import Board
from kdbench.leaderboard.readings import ANALYSIS_KEYS, METRIC_LABELS, METRICS
from kdbench.leaderboard.variant import Stat, Variant

__all__ = [
    "COLUMNS",
    "DEFAULT_COLUMNS",
    "cell",
    "choose_columns",
    "header",
    "subtitle",
    "title",
]

#: Every optional column, in display order, with its header.
COLUMNS: dict[str, str] = {
    **METRIC_LABELS,
    "params": "params",
    "time": "train time",
    "cost": "cost",
    "flags": "flags",
    "seeds": "seeds",
    "teacher_acc": "teacher clean %",
    "arch": "architecture",
    "paper": "paper",
    **ANALYSIS_KEYS,
}
DEFAULT_COLUMNS = (*METRICS, "params", "time", "cost", "flags", "seeds")
#: RobustBench-style columns added by default to the formats read in a browser or a program (a terminal
#: table has no room for them: its title already names the student architecture).
WIDE_COLUMNS = ("teacher_acc", "arch", "paper")
#: Marks a variant listed without a rank (no AutoAttack where others have it; `kdbench.leaderboard.group`).
UNRANKED_MARK = "†"
RANK_MARK = " ▼"
#: Appended to the label of a variant with a serious flag (its numbers are not to be trusted).
UNRELIABLE_MARK = "⚠ unreliable"
JSON_KIND = "kdbench-leaderboard"


def choose_columns(boards: Sequence[Board], requested: Sequence[str] | None = None, fmt: str = "table") -> list[str]:
    """The columns to show: ``requested`` (validated), else the defaults plus analysis columns in use;
    for ``fmt`` other than "table" also `WIDE_COLUMNS` (teacher accuracy, architecture, paper link)."""
    if requested:
        for name in requested:
            if name not in COLUMNS:
                raise UserError(f"--columns: unknown column {name!r}; {did_you_mean(name, COLUMNS)}")
        return list(dict.fromkeys(requested))
    present = [k for k in ANALYSIS_KEYS if any(k in v.analysis for b in boards for v in b.variants)]
    if fmt == "table":
        teacher = any(_teacher_acc(v) for b in boards for v in b.variants)
        return [*DEFAULT_COLUMNS[:6], *(["teacher_acc"] if teacher else []), *DEFAULT_COLUMNS[6:], *present]
    return [*DEFAULT_COLUMNS[:6], *WIDE_COLUMNS, *DEFAULT_COLUMNS[6:], *present]


# ------------------------------------------------------------------------------------ formatting


def _pct(stat: Stat) -> str:
    if stat.mean is None:
        return "-"
    text = f"{100 * stat.mean:.2f}"
    return text + (f" ± {100 * stat.std:.2f}" if stat.std is not None else "")


def _plain(stat: Stat) -> str:
    if stat.mean is None:
        return "-"
    text = f"{stat.mean:.3f}"
    return text + (f" ± {stat.std:.3f}" if stat.std is not None else "")


def format_count(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_seeds(seeds: Sequence[int | None]) -> str:
    """The seed values, ``0, 1, 2`` (the ``seeds`` column shows how many; this says which)."""
    return ", ".join("?" if s is None else str(s) for s in seeds)


def format_device(variant: Variant) -> str:
    """The device its seeds trained on; seeds on different devices say ``mixed devices`` (their times
    are then not one hardware's)."""
    devices = variant.train_devices
    return devices[0] if len(devices) == 1 else ("mixed devices" if devices else "")


def format_train_time(variant: Variant) -> str:
    """Mean training wall time and where it ran: ``1.5 h on NVIDIA H200`` (a time means little without
    the hardware)."""
    time = format_seconds(variant.train_seconds.mean)
    device = format_device(variant)
    return f"{time} on {device}" if device and time != "-" else time


def format_cost(variant: Variant) -> str:
    """Mean device-seconds per run (training, validation and evaluation) and the device: ``1.2 h NVIDIA H200``.
    Device-seconds from different devices are not comparable, so mixed devices are said as such."""
    costs = [c for r in variant.runs if (c := r.result.cost) is not None]
    seconds = [
        float(c["total_device_seconds"]) for c in costs if isinstance(c.get("total_device_seconds"), int | float)
    ]
    if not seconds:
        return "-"
    devices = sorted({str(c.get("device", "?")) for c in costs})
    device = devices[0] if len(devices) == 1 else "mixed devices"
    return f"{format_seconds(sum(seconds) / len(seconds))} {device}"


def cell(variant: Variant, column: str) -> str:
    """The text of one cell (accuracies in percent)."""
    if column in METRIC_LABELS:
        return _pct(variant.metrics[column])
    if column in ANALYSIS_KEYS:
        return _plain(variant.analysis.get(column, Stat(())))
    if column == "params":
        return format_count(variant.params)
    if column == "time":
        return format_train_time(variant)
    if column == "cost":
        return format_cost(variant)
    if column == "flags":
        return str(len(variant.flag_texts))
    if column == "seeds":
        return str(len(variant.runs))  # how many; `format_seeds` says which
    if column == "teacher_acc":
        return _teacher_acc(variant)
    if column == "arch":
        return variant.runs[0].result.student if variant.runs else "-"
    if column == "paper":
        return method_paper(variant.method) or "-"
    raise KeyError(column)


def _teacher_acc(variant: Variant) -> str:
    """The teacher's clean accuracy from result.json's ``teacher_metrics`` (blank when not recorded)."""
    values = []
    for run in variant.runs:
        if run.result.teacher_metrics is not None:
            values.append(float(run.result.teacher_metrics.clean_acc))
    return _pct(Stat(tuple(values))) if values else ""


def method_paper(method: str) -> str | None:
    """The paper link a method class declares (``paper = "https://..."``), else the first URL in its docstring."""
    import inspect
    import re

    from kdbench._registry import METHODS

    try:
        cls = METHODS.get(method)
    except Exception:  # a method not installed here: the board still renders
        return None
    link = getattr(cls, "paper", None)
    if isinstance(link, str) and link:
        return link
    match = re.search(r"https?://\S+", inspect.getdoc(cls) or "")
    return match.group(0).rstrip(".,);") if match else None


def header(board: Board, column: str) -> str:
    text = COLUMNS[column] + (" %" if column in METRIC_LABELS else "")
    return text + (RANK_MARK if column == board.ranked_by else "")


def title(board: Board) -> str:
    return board.setting.label()


def subtitle(board: Board, *, with_note: bool = True) -> str:
    """Ranked-by line, with the evaluation size and (``with_note``) any caveat."""
    n_eval = sorted({n for v in board.variants for n in v.n_eval})
    size = ""
    if len(n_eval) == 1:
        size = f"; n_eval {n_eval[0]}"
    elif n_eval:
        size = f"; n_eval differs between runs ({n_eval[0]}-{n_eval[-1]}): numbers are not comparable"
    model = "best-on-validation model (data.val_size)" if board.selected == "best_val" else "final model"
    text = (
        f"ranked by {METRIC_LABELS[board.ranked_by]} accuracy of each run's {model}; mean ± std over seeds; "
        f"{len(board.variants)} variants, {board.runs} runs{size}"
    )
    return text + (f". {board.note}" if board.note and with_note else "")


def rank_text(v: Variant) -> str:
    return UNRANKED_MARK if v.unranked else str(v.rank)


def _rows(board: Board, columns: Sequence[str]) -> list[list[str]]:
    """The teacher's row (rank ``T``) above its students, then the variants (unranked ones marked)."""
    teacher = [board.teacher_row] if board.teacher_row is not None else []
    return [["T", display_label(v), v.method, *(cell(v, c) for c in columns)] for v in teacher] + [
        [rank_text(v), display_label(v), v.method, *(cell(v, c) for c in columns)] for v in board.variants
    ]


def shown_variants(board: Board) -> list[Variant]:
    """The rows of `_rows`, as variants: the teacher's first when present."""
    return ([board.teacher_row] if board.teacher_row is not None else []) + list(board.variants)


def display_label(variant: Variant) -> str:
    """The variant's label, marked when a serious flag makes its numbers unreliable (as RobustBench does)."""
    return f"{variant.label} {UNRELIABLE_MARK}" if variant.unreliable else variant.label


def _heads(board: Board, columns: Sequence[str]) -> list[str]:
    return ["#", "variant", "method", *(header(board, c) for c in columns)]
