"""Render ranked boards as a terminal table, Markdown, CSV or JSON.

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

import csv
import io
import json
import shutil
from collections.abc import Sequence
from typing import Any

from kdbench._errors import UserError, did_you_mean
from kdbench.leaderboard.collect import Skipped
from kdbench.leaderboard.group import ANALYSIS_KEYS, METRIC_LABELS, METRICS, Board, Stat, Variant

__all__ = [
    "COLUMNS",
    "DEFAULT_COLUMNS",
    "cell",
    "choose_columns",
    "header",
    "render_csv",
    "render_json",
    "render_markdown",
    "render_table",
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


# ------------------------------------------------------------------------------------ formats


def _plain_table(boards: Sequence[Board], columns: Sequence[str]) -> str:
    blocks = []
    for board in boards:
        heads = _heads(board, columns)
        rows = _rows(board, columns)
        widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
        right = [i == 0 or i >= 3 for i in range(len(heads))]

        def line(cells: list[str], widths: list[int] = widths, right: list[bool] = right) -> str:
            parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
            return "  ".join(parts).rstrip()

        text = [title(board), subtitle(board), "", line(heads), line(["-" * w for w in widths])]
        text += [line(r) for r in rows]
        blocks.append("\n".join(text))
    return "\n\n".join(blocks) + "\n"


def _rich_table(boards: Sequence[Board], columns: Sequence[str], terminal: bool) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    width = max(shutil.get_terminal_size((160, 40)).columns, 100)
    console = Console(file=buffer, force_terminal=terminal, width=width, highlight=False)
    for board in boards:
        table = Table(
            title=title(board),
            caption=subtitle(board),
            box=box.SIMPLE_HEAVY,
            title_justify="left",
            caption_justify="left",
        )
        wraps = {3 + columns.index("time")} if "time" in columns else set()  # "95 min" over "on NVIDIA H200"
        for i, head in enumerate(_heads(board, columns)):
            style = "bold" if head.endswith(RANK_MARK) else None
            table.add_column(
                head, justify="right" if i == 0 or i >= 3 else "left", style=style, no_wrap=i >= 3 and i not in wraps
            )
        for variant, row in zip(shown_variants(board), _rows(board, columns), strict=True):
            table.add_row(*row, style="yellow" if variant.flags else None)
        console.print(table)
        console.print()
    return buffer.getvalue()


def render_table(boards: Sequence[Board], columns: Sequence[str], *, rich: bool = False, terminal: bool = False) -> str:
    """A text table per board: rich's when ``rich`` (flagged variants in yellow on a terminal), else plain."""
    if not boards:
        return "no results\n"
    if rich:
        try:
            return _rich_table(boards, columns, terminal)
        except ImportError:  # rich is a dependency, but the plain table needs nothing
            pass
    return _plain_table(boards, columns)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(boards: Sequence[Board], columns: Sequence[str]) -> str:
    """A Markdown section per board: table, then the texts of the flags its runs raised."""
    if not boards:
        return "_no results_\n"
    out: list[str] = []
    for board in boards:
        heads = _heads(board, columns)
        out += [f"### {_md_escape(title(board))}", "", subtitle(board) + ".", ""]
        out.append("| " + " | ".join(_md_escape(h) for h in heads) + " |")
        out.append("|" + "|".join("---:" if i == 0 or i >= 3 else "---" for i in range(len(heads))) + "|")
        for row in _rows(board, columns):
            out.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
        flagged = [v for v in board.variants if v.flags]
        if flagged:
            out += ["", "Flags raised by the evaluation's sanity checks:", ""]
            for v in flagged:
                for seed, text in v.flags:
                    serious = " (serious)" if text in v.serious else ""
                    out.append(f"- **{_md_escape(v.label)}** (seed {'?' if seed is None else seed}){serious}: {text}")
        out.append("")
    return "\n".join(out)


def _csv_columns(columns: Sequence[str]) -> list[str]:
    names = ["dataset", "norm", "eps", "teacher", "student", "rank", "ranked_by", "variant", "method"]
    for c in columns:
        if c in METRIC_LABELS or c in ANALYSIS_KEYS:
            names += [f"{c}_mean", f"{c}_std"]
        elif c == "params":
            names.append("params_student")
        elif c == "time":
            names += ["train_seconds_mean", "train_device"]
        elif c == "cost":
            names += ["device_seconds_mean", "device"]
        elif c == "flags":
            names += ["n_flags", "flags", "unreliable"]
        elif c == "seeds":
            names += ["n_seeds", "seeds"]
        elif c in ("teacher_acc", "arch", "paper"):
            names.append(c)
    return [*names, "runs"]


def render_csv(boards: Sequence[Board], columns: Sequence[str]) -> str:
    """One row per variant; accuracies as fractions, mean and std in separate columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_csv_columns(columns))
    for board in boards:
        s = board.setting
        for v in board.variants:
            rank = "" if v.unranked else v.rank  # listed without a rank: no AutoAttack (group module doc)
            row: list[Any] = [s.dataset, s.norm, s.eps, s.teacher or "", s.student, rank, board.ranked_by]
            row += [v.label, v.method]
            for c in columns:
                if c in METRIC_LABELS or c in ANALYSIS_KEYS:
                    stat = v.metrics[c] if c in METRIC_LABELS else v.analysis.get(c, Stat(()))
                    row += ["" if stat.mean is None else repr(stat.mean), "" if stat.std is None else repr(stat.std)]
                elif c == "params":
                    row.append("" if v.params is None else v.params)
                elif c == "time":
                    mean = v.train_seconds.mean
                    row += ["" if mean is None else round(mean, 3), ";".join(v.train_devices)]
                elif c == "cost":
                    costs = [x for r in v.runs if (x := r.result.cost) is not None]
                    secs = [float(x["total_device_seconds"]) for x in costs if "total_device_seconds" in x]
                    row += [
                        round(sum(secs) / len(secs), 3) if secs else "",
                        ";".join(sorted({str(x.get("device")) for x in costs})),
                    ]
                elif c == "flags":
                    row += [len(v.flag_texts), " | ".join(v.flag_texts), v.unreliable]
                elif c == "seeds":
                    row += [len(v.runs), ";".join("" if x is None else str(x) for x in v.seeds)]
                elif c == "teacher_acc":
                    row.append(cell(v, c).replace("-", ""))
                elif c in ("arch", "paper"):
                    row.append(cell(v, c))
            row.append(";".join(str(r.result_file.parent) for r in v.runs))
            writer.writerow(row)
    return buffer.getvalue()


def board_to_dict(board: Board) -> dict[str, Any]:
    """A board as JSON-ready data (fractions, mean/std/n/values per metric)."""
    return {
        "setting": board.setting.to_dict(),
        "ranked_by": board.ranked_by,
        "requested_sort": board.requested,
        "note": board.note,
        "selected": board.selected,
        "teacher": (
            {
                "label": board.teacher_row.label,
                "metrics": {m: board.teacher_row.metrics[m].to_dict() for m in METRICS},
                "n_eval": board.teacher_row.n_eval,
            }
            if board.teacher_row is not None
            else None
        ),
        "variants": [
            {
                "rank": v.rank,
                "ranked": not v.unranked,
                "label": v.label,
                "method": v.method,
                "variant_key": v.key,
                "seeds": v.seeds,
                "metrics": {m: v.metrics[m].to_dict() for m in METRICS},
                "analysis": {k: stat.to_dict() for k, stat in v.analysis.items()},
                "params_student": v.params,
                "train_seconds": v.train_seconds.to_dict(),
                "train_devices": v.train_devices,
                "n_eval": v.n_eval,
                "flags": [{"seed": seed, "text": text} for seed, text in v.flags],
                "unreliable": v.unreliable,
                "serious_flags": v.serious,
                "runs": [
                    {
                        "dir": str(r.run_dir),
                        "seed": r.seed,
                        "recipe_hash": r.result.recipe_hash,
                        "recipe": str(r.recipe_file) if r.recipe_file else None,
                        "variant_from": r.variant_source,
                    }
                    for r in v.runs
                ],
            }
            for v in board.variants
        ],
    }


def render_json(boards: Sequence[Board], skipped: Sequence[Skipped] = ()) -> str:
    """``{"kind": "kdbench-leaderboard", "version": 1, "boards": [...], "skipped": [...]}``."""
    data = {
        "kind": JSON_KIND,
        "version": 1,
        "boards": [board_to_dict(b) for b in boards],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped],
    }
    return json.dumps(data, indent=2) + "\n"
