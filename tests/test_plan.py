"""The run plan: the teacher chain in --dry-run (recipe, hash, status, cost), --teacher-set, runs folders."""

from __future__ import annotations

import json

import pytest

from kdbench.cli import main
from kdbench.engine.estimate import CPU_WARN_SECONDS, estimate_run, format_duration, warn_if_long
from kdbench.recipe import load_recipe
from kdbench.testing import tiny_recipe

from .conftest import write

TEACHER = tiny_recipe("plan_teacher", seed=None, epochs=3)

STUDENT = tiny_recipe("plan_student", seed=None, method="kd", teacher='[teacher]\nrecipe = "teacher.toml"')


@pytest.fixture
def recipes(tmp_path):
    write(tmp_path / "teacher.toml", TEACHER)
    return write(tmp_path / "student.toml", STUDENT)


def test_dry_run_lists_the_teacher_chain_with_hash_status_and_cost(recipes, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["run", str(recipes), "--set", "train.epochs=2", "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    resolved = load_recipe(recipes, ["train.epochs=2"])
    teacher = resolved.teacher_recipe
    assert out[0] == f"runs folder: {runs} (--runs-dir)"
    assert out[1].split() == [
        "plan_student",
        resolved.short_hash,
        "new",
        str(runs / "plan_student" / resolved.short_hash),
    ]
    assert out[2].strip().startswith("cost: 2 epochs x 64 images, ~")
    assert out[3].split()[:4] == ["teacher:", "plan_teacher", teacher.short_hash, "new"]
    assert "--set does not reach it" in out[4] and out[4].strip().startswith(f"recipe: {tmp_path / 'teacher.toml'}")
    assert out[5].strip().startswith("cost: 3 epochs x 64 images")  # --set train.epochs=2 did not reach it
    assert out[-1].startswith("estimated total: ~")


def test_teacher_set_reaches_the_teacher_recipe_and_changes_its_hash(recipes, tmp_path, capsys):
    runs = tmp_path / "runs"
    plain = load_recipe(recipes)
    via_set = load_recipe(recipes, ["teacher.set.train.epochs=1"])
    assert via_set.teacher_recipe.recipe.train.epochs == 1
    assert via_set.teacher_recipe.hash != plain.teacher_recipe.hash
    assert via_set.hash != plain.hash  # the student's hash follows its teacher's
    assert main(["run", str(recipes), "--teacher-set", "train.epochs=1", "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"plan_teacher  {via_set.teacher_recipe.short_hash}  new" in out
    assert "with teacher.set train.epochs=1" in out
    assert "cost: 1 epoch x 64 images" in out


def test_teacher_set_in_the_recipe_file_and_its_errors(tmp_path, capsys):
    write(tmp_path / "teacher.toml", TEACHER)
    inline = write(
        tmp_path / "inline.toml",
        STUDENT.replace('recipe = "teacher.toml"', 'recipe = "teacher.toml"\nset = {"train.epochs" = 1}'),
    )
    assert load_recipe(inline).hash == load_recipe(tmp_path / "inline.toml", []).hash
    assert (
        load_recipe(inline).teacher_recipe.hash
        == load_recipe(write(tmp_path / "s.toml", STUDENT), ["teacher.set.train.epochs=1"]).teacher_recipe.hash
    )
    bad = write(
        tmp_path / "bad.toml",
        STUDENT.replace('recipe = "teacher.toml"', 'recipe = "teacher.toml"\nset = {"train.epoch" = 1}'),
    )
    assert main(["validate", str(bad)]) == 2
    assert "train.epoch: unknown key; did you mean 'epochs'?" in capsys.readouterr().err
    no_teacher = write(tmp_path / "t2.toml", TEACHER)
    assert main(["run", str(no_teacher), "--teacher-set", "train.epochs=1", "--dry-run"]) == 2
    assert "--teacher-set needs a recipe whose teacher is trained by teacher.recipe" in capsys.readouterr().err


def test_recipes_without_teacher_set_keep_their_hash(recipes):
    # 'set' is left out of the resolved recipe when empty: finished runs of older versions stay valid.
    assert "set" not in load_recipe(recipes).to_dict()["teacher"]


def test_dry_run_marks_finished_teacher_as_reused(recipes, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["run", str(tmp_path / "teacher.toml"), "--runs-dir", str(runs), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(recipes), "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan_teacher" in out and "  done  " in out and "finished: reused, costs nothing" in out


def test_estimate_scales_with_the_work():
    from pathlib import Path

    quick = load_recipe(Path(__file__).parent.parent / "recipes" / "quickstart_teacher.toml")
    small = estimate_run(quick)
    double = estimate_run(load_recipe(quick.path, ["train.epochs=8"]))
    assert small.train_seconds > 0 and small.eval_seconds > 0
    assert double.train_seconds == pytest.approx(2 * small.train_seconds)
    attacked = estimate_run(load_recipe(quick.path, ["method.name=pgd_at"]))
    assert attacked.train_seconds > 5 * small.train_seconds  # 10 PGD steps per image cost more than 5 passes


def test_long_cpu_runs_warn_before_they_start():
    assert warn_if_long(CPU_WARN_SECONDS + 1, "cpu").startswith("warning: this run is estimated at ~3.0 h")
    assert warn_if_long(CPU_WARN_SECONDS - 1, "cpu") is None
    assert warn_if_long(10 * CPU_WARN_SECONDS, "cuda") is None
    assert [format_duration(s) for s in (42, 720, 3.4 * 3600, 2.5 * 86400)] == ["42 s", "12 min", "3.4 h", "2.5 d"]


def test_finished_run_in_another_runs_folder_is_pointed_out(tmp_path, capsys, monkeypatch):
    recipe = write(tmp_path / "teacher.toml", TEACHER)
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", str(recipe), "--runs-dir", str(first), "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("KDBENCH_RUNS_DIR", str(second))
    assert main(["run", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    h = load_recipe(recipe).short_hash
    assert out.splitlines()[0] == f"runs folder: {second} ($KDBENCH_RUNS_DIR)"
    assert f"a finished run with this hash is in {first.resolve() / 'plan_teacher' / h}" in out
    assert f"--runs-dir {first.resolve()}" in out


def test_default_runs_folder_does_not_follow_the_current_directory(tmp_path, monkeypatch, capsys):
    recipe = write(tmp_path / "teacher.toml", TEACHER)
    monkeypatch.delenv("KDBENCH_RUNS_DIR")
    home = tmp_path / "home"
    monkeypatch.setenv("KDBENCH_HOME", str(home))
    for cwd in (tmp_path / "a", tmp_path / "b"):
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        assert main(["run", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    result = home / "runs" / "plan_teacher" / load_recipe(recipe).short_hash / "result.json"
    assert json.loads(result.read_text())["name"] == "plan_teacher"
    assert not (tmp_path / "a" / "runs").exists() and not (tmp_path / "b" / "runs").exists()
    assert f"plan_teacher: already finished in {result.parent}" not in out  # quiet: no progress lines
    assert main(["run", str(recipe), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"runs folder: {home / 'runs'} (default; set $KDBENCH_RUNS_DIR or --runs-dir to change)"
    assert "  done  " in printed[1]
