"""Sweeps ([sweep] tables) and extends: expansion, naming, errors, and running every variant once."""

from __future__ import annotations

import json

import pytest

from kdbench import RecipeError
from kdbench.cli import main
from kdbench.recipe import load_recipe, load_recipes
from kdbench.testing import tiny_recipe

from .conftest import write

BASE = tiny_recipe("base")


def test_sweep_expands_the_product_with_names(tmp_path):
    path = write(tmp_path / "s.toml", BASE + '\n[sweep]\n"train.lr" = [0.1, 0.05]\nseed = [0, 1, 2]\n')
    variants = load_recipes(path)
    assert [v.recipe.name for v in variants] == [
        "base-0.1-0",
        "base-0.1-1",
        "base-0.1-2",
        "base-0.05-0",
        "base-0.05-1",
        "base-0.05-2",
    ]
    assert len({v.hash for v in variants}) == 6
    assert {(v.recipe.train.lr, v.recipe.seed) for v in variants} == {(a, b) for a in (0.1, 0.05) for b in (0, 1, 2)}
    assert "sweep" not in variants[0].to_dict()


def test_unquoted_dotted_sweep_keys_work(tmp_path):
    path = write(tmp_path / "s.toml", BASE + "\n[sweep]\ntrain.batch_size = [16, 32]\n")
    assert [v.recipe.train.batch_size for v in load_recipes(path)] == [16, 32]


@pytest.mark.parametrize(
    ("sweep", "key", "fragment"),
    [
        ('"train.epoch" = [1, 2]', "train.epoch", "did you mean 'epochs'"),
        ('"method.name" = ["natural", "kdd"]', "method.name", "in the [sweep] variant method.name='kdd'"),
        ("seed = 3", "sweep.seed", "non-empty list"),
        ("seed = []", "sweep.seed", "non-empty list"),
    ],
)
def test_sweep_errors(tmp_path, sweep, key, fragment):
    path = write(tmp_path / "s.toml", BASE + f"\n[sweep]\n{sweep}\n")
    with pytest.raises(RecipeError) as info:
        load_recipes(path)
    assert f"{path}: {key}:" in str(info.value)
    assert fragment in str(info.value)


def test_load_recipe_refuses_sweeps(tmp_path):
    path = write(tmp_path / "s.toml", BASE + "\n[sweep]\nseed = [0, 1]\n")
    with pytest.raises(RecipeError, match="names several runs"):
        load_recipe(path)


def test_extends_merges_and_rebases_paths(tmp_path):
    write(tmp_path / "base" / "teacher.toml", BASE)
    write(
        tmp_path / "base" / "kd.toml",
        BASE.replace('name = "natural"', 'name = "kd"\ntemperature = 2.0') + '\n[teacher]\nrecipe = "teacher.toml"\n',
    )
    child = write(
        tmp_path / "other" / "child.toml", 'extends = "../base/kd.toml"\nname = "child"\n[train]\nlr = 0.01\n'
    )
    r = load_recipe(child)
    assert r.recipe.name == "child" and r.recipe.train.lr == 0.01 and r.recipe.train.epochs == 1
    assert r.method_config.temperature == 2.0
    assert r.teacher_recipe is not None and r.teacher_recipe.path.resolve() == (tmp_path / "base" / "teacher.toml")


def test_extends_cycle_and_missing(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n' + BASE)
    write(tmp_path / "b.toml", 'extends = "a.toml"\n' + BASE)
    with pytest.raises(RecipeError, match="extends forms a cycle"):
        load_recipe(tmp_path / "a.toml")
    write(tmp_path / "c.toml", 'extends = "nope.toml"\n' + BASE)
    with pytest.raises(RecipeError, match=r"c\.toml: extends: base recipe .*nope\.toml' not found"):
        load_recipe(tmp_path / "c.toml")


def test_run_sweep_runs_each_variant_once(tmp_path, capsys):
    path = write(tmp_path / "s.toml", BASE + "\n[sweep]\nseed = [0, 1]\n")
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" new ") == 2
    assert main(["run", str(path), "--runs-dir", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "base-0" in out and "base-1" in out and "clean" in out.splitlines()[0]
    results = sorted(runs.rglob("result.json"))
    assert [json.loads(p.read_text())["seed"] for p in results] == [0, 1] or len(results) == 2
    assert main(["run", str(path), "--runs-dir", str(runs), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" done ") == 2
    assert main(["validate", str(path)]) == 0
    assert "ok (2 runs: base-0, base-1)" in capsys.readouterr().out


def test_a_childs_sweep_replaces_the_base_sweep(tmp_path):
    write(tmp_path / "base.toml", BASE + '\n[sweep]\n"train.lr" = [0.1, 0.05]\n')
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[sweep]\nseed = [0, 1, 2]\n')
    assert [(v.recipe.seed, v.recipe.train.lr) for v in load_recipes(child)] == [(0, 0.1), (1, 0.1), (2, 0.1)]
    single = write(tmp_path / "single.toml", 'extends = "base.toml"\n[sweep]\n')
    assert len(load_recipes(single)) == 1
    assert load_recipe(single).recipe.name == "base"
