"""The leaderboard: collect finished runs, group them by setting, average seeds, rank and render.

``kdbench leaderboard runs/`` (`kdbench.commands.leaderboard`) ties the pieces together:
`collect` (find and read result.json files, skipping bad ones), `build_boards` (settings,
`kdbench.leaderboard.setting`; variants and their mean ± std over seeds, `kdbench.leaderboard.variant`;
ranking), the text renderers of `kdbench.leaderboard.render` and the
self-contained HTML page of `kdbench.leaderboard.html`. ``kdbench robustbench RUN``
(`kdbench.commands.robustbench`) writes one run as a RobustBench model-info entry.
"""

from __future__ import annotations

from kdbench.leaderboard.collect import Collection, RunRecord, Skipped, collect
from kdbench.leaderboard.formats import render_csv, render_json, render_markdown, render_table
from kdbench.leaderboard.group import Board, build_boards
from kdbench.leaderboard.html import render_html
from kdbench.leaderboard.setting import Setting
from kdbench.leaderboard.variant import Stat, Variant

__all__ = [
    "Board",
    "Collection",
    "RunRecord",
    "Setting",
    "Skipped",
    "Stat",
    "Variant",
    "build_boards",
    "collect",
    "render_csv",
    "render_html",
    "render_json",
    "render_markdown",
    "render_table",
]
