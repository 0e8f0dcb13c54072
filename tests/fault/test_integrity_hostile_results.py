"""result.json files with hostile structure are skipped with a warning naming the file; one bad file
never takes the leaderboard (or a run) down."""

from __future__ import annotations

import json
import shutil

import pytest

from kdbench.cli import main
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from ..conftest import write
from .conftest import TINY_RECIPE


def _hostile(good: dict) -> dict[str, str]:
    """File contents a user, a script or an attacker could leave in a runs folder."""
    seed_list = {**good, "seed": [1, 2]}
    hash_object = {**good, "recipe_hash": {"a": 1}}
    huge_eps = {**good, "threat_model": {"norm": "Linf", "eps": "1e400"}}
    return {
        "deep": "[" * 100_000 + "]" * 100_000,
        "seed-list": json.dumps(seed_list),
        "hash-object": json.dumps(hash_object),
        "eps-1e400": json.dumps(huge_eps),
    }


@pytest.fixture
def runs(tmp_path):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    good = run_recipe(load_recipe(recipe), tmp_path / "runs" / "good").out_dir
    result = json.loads((good / "result.json").read_text())
    for name, text in _hostile(result).items():
        folder = tmp_path / "runs" / name
        folder.mkdir()
        (folder / "result.json").write_text(text)
    return tmp_path / "runs"


def test_leaderboard_skips_each_hostile_file_and_ranks_the_rest(runs, capsys):
    capsys.readouterr()
    assert main(["leaderboard", str(runs)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    for name in ("deep", "seed-list", "hash-object", "eps-1e400"):
        (line,) = [line for line in captured.err.splitlines() if f"{runs / name / 'result.json'}" in line]
        assert line.startswith("kdbench: skipped ")
    assert "tiny" in captured.out


@pytest.mark.parametrize("name", ["deep", "hash-object"])
def test_run_ignores_a_hostile_result_in_its_folder_with_a_warning(runs, tmp_path, capsys, name):
    recipe = tmp_path / "tiny.toml"
    out = tmp_path / "rerun"
    shutil.copytree(runs / "good", out)
    shutil.copy(runs / name / "result.json", out / "result.json")
    capsys.readouterr()

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    assert f"kdbench: warning: ignoring {out / 'result.json'}: not a readable kdbench result" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["recipe_hash"] == load_recipe(recipe).hash
