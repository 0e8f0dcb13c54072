"""A self-contained HTML leaderboard: one file, no network.

Everything is inline: the CSS, a few lines of JavaScript that sort a table when a header is clicked
(a click toggles descending / ascending; ``#sort=<table>:<column>:<asc|desc>`` in the URL applies a
sort on load), and the plots, drawn here as inline SVG (no plotting library, no fonts or scripts
fetched). Per setting the page shows

* the ranked table (accuracies in percent, mean ± std over seeds), with runs whose evaluation raised
  sanity flags highlighted and the flag texts one click away, and a link to each seed's recipe.toml
  (a path relative to the HTML file, so the page works wherever the runs folder and it move together);
* a scatter of robust accuracy (the metric the board is ranked by) against clean accuracy, with
  error bars of one std and flagged variants ringed in red;
* grouped bars of the accuracy under each attack, per variant.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from html import escape
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from kdbench.leaderboard.collect import Skipped
from kdbench.leaderboard.group import Board
from kdbench.leaderboard.readings import ANALYSIS_KEYS, METRIC_LABELS
from kdbench.leaderboard.render import (
    cell,
    format_device,
    format_seconds,
    format_seeds,
    header,
    rank_text,
    subtitle,
    title,
)
from kdbench.leaderboard.svg import (
    _breakable,
    _common_prefix,
    _scatter,
    _scatter_key,
    bars_svg,
    scatter_svg,
)
from kdbench.leaderboard.variant import Variant

__all__ = ["bars_svg", "render_html", "scatter_svg"]

#: Table columns holding text (left-aligned, sorted as text); the others are numbers.
TEXT_COLUMNS = ("arch", "paper")

#: The page's stylesheet and script, kept beside this module as page.css and page.js (package data) and
#: inlined into every page, so the file needs nothing from the network.
_CSS = resources.files("kdbench.leaderboard").joinpath("page.css").read_text(encoding="utf-8")
_JS = resources.files("kdbench.leaderboard").joinpath("page.js").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------ the table


def _link(path: Path, base: Path) -> str:
    rel = os.path.relpath(path.resolve(), base.resolve())
    return quote(Path(rel).as_posix())


def _sort_value(v: Variant, column: str) -> str:
    if column in METRIC_LABELS:
        mean = v.metrics[column].mean
    elif column in ANALYSIS_KEYS:
        stat = v.analysis.get(column)
        mean = stat.mean if stat is not None else None
    elif column == "params":
        return "" if v.params is None else str(v.params)
    elif column == "time":
        mean = v.train_seconds.mean
    elif column == "cost":
        secs = [c.get("total_device_seconds") for r in v.runs if (c := r.result.cost) is not None]
        nums = [float(x) for x in secs if isinstance(x, int | float)]
        mean = sum(nums) / len(nums) if nums else None
    elif column == "flags":
        return str(len(v.flag_texts))
    elif column == "seeds":
        return str(len(v.runs))
    else:
        return ""
    return "" if mean is None else repr(mean)


def _unranked_title(v: Variant) -> str:
    return ' title="no AutoAttack: not ranked (ordered by PGD-20)"' if v.unranked else ""


def _flags_cell(v: Variant) -> str:
    if not v.flags:
        return '<td class="num" data-v="0">0</td>'
    items = "".join(
        f"<li>{escape(text)}{'' if seed is None else f' <em>(seed {seed})</em>'}</li>" for seed, text in v.flags
    )
    count = len(v.flag_texts)
    return f'<td class="num" data-v="{count}"><details><summary>⚑ {count}</summary><ul>{items}</ul></details></td>'


def _number_cell(v: Variant, column: str) -> str:
    """A number cell; a ``± std`` goes on a line of its own under the mean, so columns stay narrow."""
    text = cell(v, column)
    mean, sep, std = text.partition(" ± ")
    inner = f'{escape(mean)}<span class="sd">± {escape(std)}</span>' if sep else escape(text)
    return f'<td class="num" data-v="{_sort_value(v, column)}">{inner}</td>'


def _time_cell(v: Variant) -> str:
    """The mean training time with the device it ran on under it (``mixed devices`` when seeds differ)."""
    time = format_seconds(v.train_seconds.mean)
    device = format_device(v)
    title = f' title="trained on {escape(", ".join(v.train_devices))}"' if v.train_devices else ""
    under = f'<span class="dev">{escape(device)}</span>' if device and time != "-" else ""
    return f'<td class="num" data-v="{_sort_value(v, "time")}"{title}>{escape(time)}{under}</td>'


def _cost_cell(v: Variant) -> str:
    """Device-seconds per run; the device is in the tooltip (the time column already shows it)."""
    value = _sort_value(v, "cost")
    devices = sorted({str(c.get("device", "?")) for r in v.runs if (c := r.result.cost) is not None})
    title = f' title="device time on {escape(", ".join(devices))}"' if devices and value else ""
    return f'<td class="num" data-v="{value}"{title}>{escape(format_seconds(float(value)) if value else "-")}</td>'


def _seeds_cell(v: Variant) -> str:
    return f'<td class="num" data-v="{len(v.runs)}" title="seeds {escape(format_seeds(v.seeds))}">{len(v.runs)}</td>'


def _recipe_cell(v: Variant, base: Path) -> str:
    links = []
    for r in v.runs:
        if r.recipe_file is None:
            continue
        text = "recipe" if len(v.runs) == 1 else f"s{'?' if r.seed is None else r.seed}"
        links.append(f'<a href="{_link(r.recipe_file, base)}">{escape(text)}</a>')
    return f'<td class="recipe" data-v="">{" ".join(links) or "-"}</td>'


def _table(board: Board, columns: Sequence[str], base: Path, index: int) -> str:
    # A column with nothing to say for this board (no run recorded its teacher's accuracy) takes no room.
    columns = [c for c in columns if c in METRIC_LABELS or any(cell(v, c) for v in board.variants)]
    heads = [
        '<th data-key="rank" data-type="num" data-first="asc" class="num" aria-sort="ascending">#</th>',
        '<th data-key="variant" data-type="text" data-first="asc">variant</th>',
        # the recipe links next to the name, where a wide table never pushes them out of sight
        '<th data-key="recipe" data-type="text" data-first="asc">recipe</th>',
        '<th data-key="method" data-type="text" data-first="asc">method</th>',
    ]
    for c in columns:
        if c in TEXT_COLUMNS:
            heads.append(f'<th data-key="{c}" data-type="text" data-first="asc">{escape(header(board, c))}</th>')
            continue
        first = "asc" if c in ("params", "time", "flags", "class_corr_distance", "feature_change") else "desc"
        cls = "num ranked" if c == board.ranked_by else "num"
        heads.append(
            f'<th data-key="{c}" data-type="num" data-first="{first}" class="{cls}">{escape(header(board, c))}</th>'
        )
    rows = []
    for v in board.variants:
        runs = "\n".join(str(r.run_dir) for r in v.runs)
        cells = [
            f'<td class="num" data-v="{v.rank}"{_unranked_title(v)}>{escape(rank_text(v))}</td>',
            f'<td class="label" data-v="{escape(v.label)}" title="{escape(runs)}">'
            f"{'<span class=flag>⚑</span> ' if v.flags else ''}{_breakable(v.label)}"
            f"{' <span class=flag>⚠ unreliable</span>' if v.unreliable else ''}</td>",
            _recipe_cell(v, base),
            f'<td class="wrap" data-v="{escape(v.method)}">{escape(v.method)}</td>',
        ]
        for c in columns:
            if c == "flags":
                cells.append(_flags_cell(v))
            elif c == "paper" and cell(v, c).startswith("http"):
                url = cell(v, c)
                cells.append(
                    f'<td data-v="{escape(url)}"><a href="{escape(url)}">{escape(url.rsplit("/", 1)[-1])}</a></td>'
                )
            elif c == "paper":
                cells.append('<td data-v="">-</td>')
            elif c == "time":
                cells.append(_time_cell(v))
            elif c == "cost":
                cells.append(_cost_cell(v))
            elif c == "seeds":
                cells.append(_seeds_cell(v))
            elif c == "arch":
                cells.append(f'<td class="wrap" data-v="{escape(cell(v, c))}">{escape(cell(v, c))}</td>')
            else:
                cells.append(_number_cell(v, c))
        cls = ' class="flagged"' if v.flags else ""
        rows.append(f'<tr{cls} data-variant="{escape(v.label)}">' + "".join(cells) + "</tr>")
    teacher = ""
    if board.teacher_row is not None:  # above the students, outside the sortable rows
        t = board.teacher_row
        shown = ", ".join(
            f"{escape(header(board, c).removesuffix(' ▼'))} {escape(cell(t, c))}" for c in columns if c in METRIC_LABELS
        )
        teacher = f'<p class="teacher"><b>{escape(t.label)}</b> (its own numbers, same examples): {shown}</p>'
    return (
        f'{teacher}<div class="scroll"><table class="lb" id="table-{index}"><thead><tr>{"".join(heads)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def render_html(
    boards: Sequence[Board],
    columns: Sequence[str],
    *,
    out_file: Path | None = None,
    skipped: Sequence[Skipped] = (),
    sources: Sequence[Path] = (),
    generated: str | None = None,
    page_title: str = "kdbench leaderboard",
) -> str:
    """The whole page. Recipe links are relative to ``out_file``'s folder (the working directory if None)."""
    from kdbench import __version__

    base = out_file.parent if out_file is not None else Path.cwd()
    when = generated if generated is not None else _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    n_runs = sum(b.runs for b in boards)
    where = ", ".join(str(s) for s in sources)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page_title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{escape(page_title)}</h1>",
        f'<p class="meta">{n_runs} runs in {len(boards)} setting{"s" if len(boards) != 1 else ""}'
        f"{f' from {escape(where)}' if where else ''} · kdbench {escape(__version__)} · {escape(when)}. "
        "Accuracies in percent, mean ± std over seeds; click a column header to sort; "
        '<span class="flag">⚑</span> marks runs whose evaluation raised sanity flags.</p>',
    ]
    if not boards:
        parts.append("<p>No results found.</p>")
    for i, board in enumerate(boards):
        note = f' <span class="note">{escape(board.note)}.</span>' if board.note else ""
        sub = escape(subtitle(board, with_note=False))
        svg, key = _scatter(board)
        numbered = "; numbered points are named in the key" if key else ""
        shared = _common_prefix([v.label for v in board.variants if v.metrics["clean"].mean is not None])
        if shared:
            numbered += f"; labels omit the common start {shared}…"
        parts += [
            f'<section class="board" id="board-{i}">',
            f"<h2>{escape(title(board))}</h2>",
            f'<p class="sub">{sub}.{note}</p>',
            _table(board, columns, base, i),
            '<div class="plots">',
            f'<figure class="scatter">{svg}{_scatter_key(key)}',
            f"<figcaption>{escape(METRIC_LABELS[board.ranked_by])} against clean accuracy (bars: ±1 std over "
            f"seeds; red ring: evaluation flags{numbered}).</figcaption></figure>",
            f"<figure>{bars_svg(board)}<figcaption>Accuracy under each attack, variants in rank order."
            "</figcaption></figure>",
            "</div></section>",
        ]
    if skipped:
        items = "".join(f"<li><code>{escape(str(s.path))}</code>: {escape(s.reason)}</li>" for s in skipped)
        parts.append(f'<details class="skipped"><summary>{len(skipped)} result files skipped</summary><ul>{items}</ul>')
        parts.append("</details>")
    parts += [f"<script>{_JS}</script>", "</main></body></html>"]
    return "\n".join(parts) + "\n"
