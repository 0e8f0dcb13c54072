"""Outputs in a folder the kernel refuses to write (here /sys, where even root gets EPERM): one line
naming the path, exit 2, no traceback, for `run --out`, `run --runs-dir`, `eval --out` and
`leaderboard --out`."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from ..conftest import write
from .conftest import TINY_RECIPE

FORBIDDEN = Path("/sys/kdbench-unwritable")

pytestmark = pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs Linux /sys")


@pytest.fixture
def finished(tmp_path):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    return recipe, run_recipe(load_recipe(recipe), tmp_path / "runs" / "tiny").out_dir


def test_unwritable_outputs_are_one_line_errors(finished, capsys):
    recipe, run = finished
    try:
        FORBIDDEN.mkdir()
    except PermissionError:
        pass
    else:  # pragma: no cover - a system where /sys is writable
        FORBIDDEN.rmdir()
        pytest.skip("/sys is writable here")
    capsys.readouterr()
    cases = [
        ["run", str(recipe), "--out", str(FORBIDDEN / "out"), "--quiet"],
        ["run", str(recipe), "--runs-dir", str(FORBIDDEN), "--quiet"],
        ["eval", str(run), "--attacks", "clean", "--out", str(FORBIDDEN / "eval.json")],
        ["leaderboard", str(run.parent), "--out", str(FORBIDDEN / "board.md")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and err.count("error") == 1, err
        assert last.startswith("kdbench: error: cannot write or read /sys/kdbench-unwritable"), err
        assert last.endswith("choose a writable location (--out, --runs-dir) or fix its permissions")
