"""kdbench.run_folder and kdbench.results.Result: one owner of a run folder, one typed result for every reader.

The acceptance point these tests hold: a finished run folder is self-contained, so ``kdbench eval``,
``analyze`` and ``export`` of it work with the recipes that produced it gone.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from kdbench import _toml
from kdbench.cli import main
from kdbench.recipe import load_recipe
from kdbench.results import Result, ResultError, result_problem
from kdbench.run import run_recipe
from kdbench.run_folder import PROVENANCE_TABLE, RunFolder
from kdbench.testing import tiny_recipe

from .conftest import write

TEACHER = tiny_recipe("teacher", test_size=24, train_extra="deterministic = true")

STUDENT = tiny_recipe(
    "student",
    method="kd",
    test_size=24,
    teacher='[teacher]\nrecipe = "teachers/teacher.toml"',
    train_extra="deterministic = true",
    attacks=("clean", "fgsm"),
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A student run (with a teacher recipe in another folder) whose recipes are deleted afterwards."""
    base = tmp_path_factory.mktemp("selfcontained")
    recipes = base / "recipes"
    write(recipes / "teachers" / "teacher.toml", TEACHER)
    student = write(recipes / "student.toml", STUDENT)
    with pytest.MonkeyPatch.context() as mp:  # the root conftest's isolation is per test; this is per module
        mp.setenv("KDBENCH_HOME", str(base / "home"))
        mp.setenv("KDBENCH_CACHE_DIR", str(base / "cache"))
        resolved = load_recipe(student)
        outcome = run_recipe(resolved, runs_dir=base / "runs")
    shutil.rmtree(recipes)  # what the folder needs must be in the folder
    return outcome.out_dir, base / "runs", resolved.hash


def test_recipe_toml_is_self_contained(finished):
    run, runs, run_hash = finished
    folder = RunFolder(run)
    assert folder.recorded_hash() == run_hash
    raw = _toml.load_file(folder.recipe_file)
    teacher = raw["teacher"]
    assert "recipe" not in teacher and teacher["model"] == "resnet8"
    teacher_run = next((runs / "teacher").iterdir())
    assert (run / teacher["checkpoint"]).resolve() == (teacher_run / "model.pt").resolve()
    provenance = raw[PROVENANCE_TABLE]
    assert provenance["hash"] == run_hash
    assert provenance["recipe"].endswith("recipes/student.toml")
    assert provenance["teacher"]["hash"].startswith(teacher_run.name)
    assert (run / provenance["teacher"]["run"]).resolve() == teacher_run.resolve()
    # the settings without the provenance; the folder resolves from itself, the teacher being its weights
    assert PROVENANCE_TABLE not in folder.recipe_table()
    resolved = folder.resolve()
    assert resolved.recipe.teacher is not None and resolved.teacher_recipe is None
    assert resolved.recipe.method.name == "kd"
    assert folder.teacher_weights() == run / teacher["checkpoint"]


def test_eval_analyze_and_export_need_nothing_but_the_folder(finished, capsys):
    run, _, _ = finished
    work = Path(str(run) + "-copy")
    shutil.copytree(run, work)
    assert main(["eval", str(work), "--attacks", "clean", "--n", "16"]) == 0
    assert json.loads((work / "eval.json").read_text())["metrics"]["n_eval"] == 16
    assert main(["analyze", str(work), "--n", "8"]) == 0
    assert Result.read(work / "result.json").analysis is not None
    assert main(["export", str(work)]) == 0
    assert (work / "model.safetensors").is_file()
    capsys.readouterr()


def test_a_run_folder_recipe_loads_as_a_recipe(finished):
    """``kdbench run runs/<name>/<hash>/recipe.toml`` reruns the experiment: the [run] table is not a setting."""
    run, _, _ = finished
    resolved = load_recipe(run / "recipe.toml")
    assert resolved.recipe.name == "student"


def test_a_user_table_named_run_is_still_an_error(tmp_path):
    """Only kdbench's own run-folder copy (headed "# resolved recipe") may carry the provenance table."""
    from kdbench._errors import RecipeError

    path = write(tmp_path / "r.toml", TEACHER + '\n[run]\nhash = "x"\n')
    with pytest.raises(RecipeError, match="run"):
        load_recipe(path)


def test_status_finished_and_unfinished(finished, tmp_path):
    run, _, run_hash = finished
    folder = RunFolder(run)
    assert folder.status(run_hash) == "done"
    assert folder.status("0" * 64) != "done"  # another recipe's hash
    assert RunFolder(tmp_path / "nothing").status(run_hash) == "new"
    copy_ = RunFolder(tmp_path / "damaged")
    shutil.copytree(run, copy_.path)
    copy_.model_file.write_bytes(copy_.model_file.read_bytes()[:-10])
    assert copy_.finished(run_hash) is None  # a damaged model.pt is never counted as finished
    assert copy_.status(run_hash) == "partial"


def test_claim_refuses_another_recipes_folder(finished, tmp_path):
    from kdbench._errors import UserError

    run, _, _ = finished
    other = load_recipe(write(tmp_path / "t.toml", TEACHER.replace('name = "teacher"', 'name = "other"')))
    with pytest.raises(UserError, match="holds a run of another recipe"):
        RunFolder(run).claim(other)


def test_unfinished_folders_are_one_line_errors(tmp_path):
    from kdbench._errors import UserError

    with pytest.raises(UserError, match="not found"):
        RunFolder(tmp_path / "missing").require_model()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a kdbench run folder"):
        RunFolder(tmp_path / "empty").require_model()


def test_teacher_evaluations_are_cached_in_the_runs_folder_even_with_out(tmp_path):
    """The teacher's numbers are cached per runs folder, not two levels above wherever --out points."""
    write(tmp_path / "teachers" / "teacher.toml", TEACHER)
    student = write(tmp_path / "student.toml", STUDENT)
    runs = tmp_path / "runs"
    run_recipe(load_recipe(student), tmp_path / "somewhere" / "deep" / "out", runs_dir=runs)
    assert any((runs / ".teacher-evals").iterdir())
    assert not (tmp_path / "somewhere" / ".teacher-evals").exists()


# ------------------------------------------------------------------------------------ Result


def test_a_written_result_reads_back_to_the_same_bytes(finished):
    run, _, _ = finished
    text = (run / "result.json").read_text()
    result = Result.read(run / "result.json")
    assert json.dumps(result.dump(), indent=2) + "\n" == text  # same keys, same order, same values
    assert result.metrics.n_eval == 24 and result.metrics.counts is not None
    assert result.train is not None and result.train.epochs == 1
    assert result.teacher == "resnet8" and result.method == "kd"


def test_unknown_keys_survive_a_read_and_write(finished, tmp_path):
    run, _, _ = finished
    data = json.loads((run / "result.json").read_text())
    data["from_a_newer_kdbench"] = {"nested": [1, 2]}
    data["metrics"]["new_metric"] = 0.5
    result = Result.parse(data)
    result.updated(analysis={"n": 1}).write(tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["from_a_newer_kdbench"] == {"nested": [1, 2]}
    assert back["metrics"]["new_metric"] == 0.5 and back["analysis"] == {"n": 1}


def test_an_older_minimal_result_is_read(tmp_path):
    old = {
        "schema_version": 1,
        "name": "old",
        "method": "kd",
        "student": "resnet8",
        "dataset": "cifar10",
        "threat_model": {"norm": "Linf", "eps": "8/255"},
        "metrics": {"clean_acc": 0.4359999895095825, "robust": {"pgd20": 0.30000001192092896, "cw": None}},
    }
    result = Result.parse(old)
    assert result.recipe_hash is None and result.metrics.n_eval is None and result.flags == []
    assert result.dump() == old  # nothing added on the way


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("metrics"), "metrics is missing"),
        (lambda r: r.update(name=""), "name is not a non-empty string"),
        (lambda r: r["metrics"].update(clean_acc=1.5), "metrics.clean_acc is not a fraction in [0, 1]"),
        (lambda r: r["metrics"].update(clean_acc=True), "metrics.clean_acc is not a fraction in [0, 1]"),
        (lambda r: r["metrics"]["robust"].update(fgsm="0.3"), "metrics.robust.fgsm is not a fraction in [0, 1]"),
        (lambda r: r["threat_model"].update(eps="1e400"), "threat_model.eps '1e400' is not a finite number"),
        (lambda r: r.update(train=[1]), "train is not an object"),
        (lambda r: r.update(seed=1.5), "seed: "),
        (lambda r: r.update(schema_version=2), "schema_version 2, this kdbench reads 1"),
    ],
)
def test_problems_are_one_line_and_name_the_key(finished, mutate, reason):
    run, _, _ = finished
    data = copy.deepcopy(json.loads((run / "result.json").read_text()))
    mutate(data)
    problem = result_problem(data)
    assert problem is not None and problem.startswith(reason) and "\n" not in problem
    with pytest.raises(ResultError):
        Result.parse(data)
