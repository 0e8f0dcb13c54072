"""Results written before result.json recorded ``teacher_source``: ``kdbench eval RUN --update-result``
derives the teacher's identity from the run folder, so the leaderboard ranks them beside today's runs of
the same teacher instead of on a board of their own."""

from __future__ import annotations

import json
from pathlib import Path

from kdbench import _toml
from kdbench.cli import main
from kdbench.leaderboard import build_boards, collect
from kdbench.run_folder import RunFolder
from kdbench.testing import tiny_recipe

from .conftest import write

TEACHER = tiny_recipe("teacher", test_size=24, attacks=("clean", "fgsm"))


def student(name: str, teacher_table: str) -> str:
    """A KD student recipe named ``name`` with the given [teacher] table."""
    return tiny_recipe(name, method="kd", test_size=24, attacks=("clean", "fgsm"), teacher=teacher_table)


def _run(recipe: Path, runs: Path) -> Path:
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--quiet"]) == 0
    (folder,) = (runs / _toml.load_file(recipe)["name"]).iterdir()
    return folder


def _as_written_before_teacher_source(folder: Path, teacher_table: dict) -> None:
    """What kdbench wrote before teacher identities: no ``teacher_source``, and a recipe.toml whose teacher
    table is the original recipe's (a teacher recipe by its path, not the teacher run's model.pt)."""
    result = json.loads((folder / "result.json").read_text())
    del result["teacher_source"]
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    recipe = RunFolder(folder).recipe_file
    header = recipe.read_text().split("\n", 1)[0].removeprefix("# ")
    table = _toml.load_file(recipe)
    table.pop("run", None)  # the provenance table came with the self-contained recipe.toml
    table["teacher"] = teacher_table
    recipe.write_text(_toml.dumps(table, header=header))


def _students(runs: Path) -> list[tuple[str | None, list[str]]]:
    boards = build_boards(collect([runs]).runs)
    return [(b.setting.teacher_id, sorted(v.label for v in b.variants)) for b in boards if b.setting.teacher]


def test_update_result_records_the_teacher_of_an_old_result_and_the_boards_merge(tmp_path, capsys):
    runs = tmp_path / "runs"
    teacher = write(tmp_path / "recipes" / "teacher.toml", TEACHER)
    for name in ("old", "new"):
        write(tmp_path / "recipes" / f"{name}.toml", student(name, '[teacher]\nrecipe = "teacher.toml"'))
    old = _run(tmp_path / "recipes" / "old.toml", runs)
    new = _run(tmp_path / "recipes" / "new.toml", runs)
    key = json.loads((new / "result.json").read_text())["teacher_source"]["key"]
    assert key.startswith("recipe:")
    _as_written_before_teacher_source(old, {"recipe": str(teacher)})
    assert sorted(_students(runs), key=str) == sorted(
        [(None, ["old"]), (key, ["new"])], key=str
    )  # the old teacher is unknown
    capsys.readouterr()

    assert main(["eval", str(old), "--update-result"]) == 0
    assert f"teacher identity {key} recorded" in capsys.readouterr().out
    source = json.loads((old / "result.json").read_text())["teacher_source"]
    assert source["key"] == key and source["derived"] == "the run folder" and source["model"] == "resnet8"
    assert source["path"] == str(runs / "teacher" / key.removeprefix("recipe:")[:10] / "model.pt")
    assert "teacher_source" not in json.loads((old / "result.json.orig").read_text())
    assert _students(runs) == [(key, ["new", "old"])]  # one board: the same teacher

    # A result that records its teacher is left as it is.
    before = json.loads((new / "result.json").read_text())["teacher_source"]
    assert main(["eval", str(new), "--update-result"]) == 0
    assert "teacher identity" not in capsys.readouterr().out
    assert json.loads((new / "result.json").read_text())["teacher_source"] == before


def test_a_checkpoint_teacher_is_identified_by_its_weights(tmp_path, capsys):
    runs = tmp_path / "runs"
    teacher = _run(write(tmp_path / "recipes" / "teacher.toml", TEACHER), runs)
    weights = teacher / "model.pt"
    table = f'[teacher]\nmodel = "resnet8"\ncheckpoint = "{weights}"\n'
    old = _run(write(tmp_path / "recipes" / "old.toml", student("old", table)), runs)
    new = _run(write(tmp_path / "recipes" / "new.toml", student("new", table)), runs)
    expected = json.loads((new / "result.json").read_text())["teacher_source"]
    _as_written_before_teacher_source(old, {"model": "resnet8", "checkpoint": str(weights)})
    assert main(["eval", str(old), "--update-result"]) == 0
    source = json.loads((old / "result.json").read_text())["teacher_source"]
    assert {k: source[k] for k in ("source", "key", "sha256")} == {k: expected[k] for k in ("source", "key", "sha256")}
    assert _students(runs) == [(expected["key"], ["new", "old"])]


def test_a_teacher_recipe_that_does_not_resolve_from_the_folder_is_named_with_teacher(tmp_path, capsys):
    """Older kdbench wrote teacher.recipe relative to the original recipe: from the folder it leads nowhere.
    The evaluation is still written, with a note; ``--teacher RUN`` then names the teacher run."""
    runs = tmp_path / "runs"
    write(tmp_path / "recipes" / "teacher.toml", TEACHER)
    for name in ("old", "new"):
        write(tmp_path / "recipes" / f"{name}.toml", student(name, '[teacher]\nrecipe = "teacher.toml"'))
    old = _run(tmp_path / "recipes" / "old.toml", runs)
    new = _run(tmp_path / "recipes" / "new.toml", runs)
    key = json.loads((new / "result.json").read_text())["teacher_source"]["key"]
    _as_written_before_teacher_source(old, {"model": "resnet8", "recipe": "teacher.toml"})
    capsys.readouterr()
    assert main(["eval", str(old), "--update-result"]) == 0
    err = capsys.readouterr().err
    assert "teacher identity not recorded:" in err and "does not resolve from the run folder" in err
    assert err.rstrip().endswith("name the teacher run with --teacher RUN") and "--teacher-checkpoint" not in err
    result = json.loads((old / "result.json").read_text())
    assert "teacher_source" not in result and "reevaluated" in result

    (teacher_run,) = (runs / "teacher").iterdir()
    assert main(["eval", str(old), "--update-result", "--teacher", str(teacher_run)]) == 0
    assert f"teacher identity {key} recorded" in capsys.readouterr().out
    source = json.loads((old / "result.json").read_text())["teacher_source"]
    assert source["key"] == key and source["derived"] == "--teacher"
    assert _students(runs) == [(key, ["new", "old"])]


def test_teacher_mistakes_are_one_line_errors_before_any_evaluation(tmp_path, capsys):
    runs = tmp_path / "runs"
    write(tmp_path / "recipes" / "teacher.toml", TEACHER)
    resnet20 = tiny_recipe("other", student="resnet20", test_size=24, attacks=("clean", "fgsm"))
    other = _run(write(tmp_path / "recipes" / "other.toml", resnet20), runs)  # another architecture
    old = _run(write(tmp_path / "recipes" / "old.toml", student("old", '[teacher]\nrecipe = "teacher.toml"\n')), runs)
    twin = tiny_recipe("twin", seed=1, test_size=24, attacks=("clean", "fgsm"))
    twin_run = _run(write(tmp_path / "recipes" / "twin.toml", twin), runs)  # the same network, other weights
    (teacher_run,) = (runs / "teacher").iterdir()

    def refused(args: list[str], message: str) -> None:
        (old / "eval.json").unlink(missing_ok=True)
        assert main(["eval", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (old / "eval.json").exists()  # refused before evaluating

    refused([str(old), "--teacher", str(teacher_run)], "--teacher names the teacher that --update-result records")
    refused([str(old), "--update-result", "--teacher", str(twin_run)], "drop --teacher")  # it records another
    _as_written_before_teacher_source(old, {"model": "resnet8", "recipe": "teacher.toml"})
    refused([str(old), "--update-result", "--teacher", str(other)], "trained 'resnet20', but")
    refused([str(old), "--update-result", "--teacher", str(tmp_path / "nowhere")], "are not there")
    recorded = json.loads((runs / "old").joinpath(old.name, "result.json").read_text())
    assert "teacher_source" not in recorded
