"""``kdbench leaderboard DIR... [--format table|md|csv|json|html] [--out FILE] [--sort METRIC] [--columns LIST]``.

Finds every result.json under the folders (`kdbench.leaderboard.collect`; broken files and files of
another schema version are reported on stderr, one line each, and skipped), groups runs by setting
(`kdbench.leaderboard.setting`), averages seeds (`kdbench.leaderboard.variant`) and ranks them
(`kdbench.leaderboard.group`), and renders the ranked boards
(`kdbench.leaderboard.render`, `kdbench.leaderboard.html`) to stdout or, atomically, to ``--out``.
``--format`` defaults to the output file's extension (``.md``, ``.csv``, ``.json``, ``.html``), else
``table``: rich's table on a terminal, a plain aligned table otherwise (rich pads to 80 columns when
piped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kdbench._errors import UserError
from kdbench.engine.checkpoint import atomic_write_bytes
from kdbench.leaderboard.collect import collect
from kdbench.leaderboard.formats import render_csv, render_json, render_markdown, render_table
from kdbench.leaderboard.group import SORT_KEYS, build_boards
from kdbench.leaderboard.html import render_html
from kdbench.leaderboard.published import load_published, published_to_dict, render_published
from kdbench.leaderboard.readings import SELECTIONS
from kdbench.leaderboard.render import COLUMNS, choose_columns

__all__ = ["FORMATS", "add_parser", "cmd_leaderboard"]

FORMATS = ("table", "md", "csv", "json", "html")
_BY_SUFFIX = {".md": "md", ".markdown": "md", ".csv": "csv", ".json": "json", ".html": "html", ".htm": "html"}


def add_parser(subparsers: Any) -> None:
    """Add ``leaderboard`` to ``subparsers`` (sets ``handler``; see `kdbench.cli.COMMAND_MODULES`)."""
    p = subparsers.add_parser(
        "leaderboard",
        help="rank finished runs per setting (table, Markdown, CSV, JSON or HTML)",
        description="Rank the runs found under DIR... per setting (dataset, threat model, teacher, student), "
        "averaging seeds, by AutoAttack accuracy (PGD-20 where AutoAttack was not run).",
    )
    p.add_argument(
        "dirs",
        type=Path,
        nargs="*",
        metavar="DIR",
        help="folders searched for result.json (recursively; default: the runs folder, $KDBENCH_RUNS_DIR)",
    )
    p.add_argument("--format", choices=FORMATS, help="output format (default: from --out's extension, else table)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="autoattack",
        help="metric to rank by (default autoattack; PGD-20 for a setting where AutoAttack is missing)",
    )
    p.add_argument(
        "--columns",
        metavar="LIST",
        help=f"comma-separated columns to show, of: {', '.join(COLUMNS)} "
        "(default: all but the analysis ones, which appear when a run has them)",
    )
    p.add_argument("--title", default="kdbench leaderboard", help="heading of the HTML page")
    p.add_argument(
        "--select",
        choices=SELECTIONS,
        default="final",
        help="which weights of each run to rank: its final model (default) or, for runs with data.val_size, "
        "its best-on-validation model (selected on held-out training images, never on the test set)",
    )
    p.add_argument(
        "--published",
        type=Path,
        metavar="FILE",
        help="also show published numbers from FILE (e.g. benchmarks/published.toml) in separate tables, "
        "marked 'published' (table, md and json formats)",
    )
    p.set_defaults(handler=cmd_leaderboard)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Collect, rank, render; returns 0 (also when nothing was found, which is said on stderr)."""
    out: Path | None = args.out
    fmt = args.format or (_BY_SUFFIX.get(out.suffix.lower(), "table") if out is not None else "table")
    if not args.dirs:
        from kdbench.locations import default_runs_dir

        args.dirs = [default_runs_dir()]
    collection = collect(args.dirs)
    boards = build_boards(collection.runs, sort=args.sort, select=args.select)
    published = load_published(args.published) if args.published is not None else []
    if published and fmt not in ("table", "md", "json"):
        raise UserError(f"--published is shown in the table, md and json formats, not {fmt}")
    requested = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    columns = choose_columns(boards, requested, fmt)
    if not boards:
        print(f"kdbench: no usable result.json under {', '.join(map(str, args.dirs))}", file=sys.stderr)
    if fmt == "table":
        terminal = out is None and sys.stdout.isatty()
        text = render_table(boards, columns, rich=terminal, terminal=terminal)
    elif fmt == "md":
        text = render_markdown(boards, columns)
    elif fmt == "csv":
        text = render_csv(boards, columns)
    elif fmt == "json":
        text = render_json(boards, collection.skipped)
    else:
        text = render_html(
            boards, columns, out_file=out, skipped=collection.skipped, sources=args.dirs, page_title=args.title
        )
    if published and fmt == "json":
        data = json.loads(text)
        data["published"] = published_to_dict(published)
        text = json.dumps(data, indent=2) + "\n"
    elif published:
        text += "\n" + render_published(published, markdown=fmt == "md")
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, text.encode("utf-8"))
        print(f"leaderboard: {out} ({len(boards)} settings, {sum(b.runs for b in boards)} runs)", file=sys.stderr)
    return 0
