"""The leaderboard as text: a plain or rich terminal table, Markdown, CSV and JSON (the HTML page is
`kdbench.leaderboard.html`); the cells and titles they share are `kdbench.leaderboard.render`."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Sequence
from typing import Any

from kdbench.leaderboard.collect import Skipped
from kdbench.leaderboard.group import Board
from kdbench.leaderboard.readings import ANALYSIS_KEYS, METRIC_LABELS, METRICS
from kdbench.leaderboard.render import JSON_KIND, RANK_MARK, _heads, _rows, cell, shown_variants, subtitle, title
from kdbench.leaderboard.variant import Stat

__all__ = ["JSON_KIND", "board_to_dict", "render_csv", "render_json", "render_markdown", "render_table"]


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
