"""``kdbench bench --eval-only [--weights PATH]``: the evaluation timing alone, on random or trained weights.

The GPU script (benchmarks/gpu/run.py) times PGD-20 and AutoAttack on 10,000 images this way. Here, on CPU
with a fake dataset: the report has no training step, says which weights it evaluated, records the library
versions, and ``--weights`` really loads the run's network (the clean accuracy equals the run's own).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench.cli import main

from .conftest import write

RECIPE = """
name = "evalonly"
seed = 0
[data]
dataset = "fake"
options = {train_size = 64, test_size = 32, image_size = 16}
[student]
model = "resnet8"
[method]
name = "natural"
[train]
epochs = 2
batch_size = 16
[eval]
attacks = ["clean"]
"""


def _bench(recipe: Path, out: Path, *extra: str) -> dict:
    argv = ["bench", str(recipe), "--eval-only", "--eval-n", "32", "--no-autoattack", "--quiet", "--json", str(out)]
    assert main([*argv, *extra]) == 0
    return json.loads(out.read_text())


def test_eval_only_times_the_attacks_without_a_training_step(tmp_path, capsys):
    recipe = write(tmp_path / "r.toml", RECIPE)
    report = _bench(recipe, tmp_path / "b.json")
    assert report["mode"] == "eval"
    assert report["step"] is None and report["baseline"] is None and report["speedup"] is None
    assert report["student_weights"] == "random init"
    ev = report["eval"]
    assert ev["n"] == 32 and ev["pgd20"]["seconds"] > 0 and ev["autoattack"] is None
    assert "lower bound" in ev["note"]
    assert report["versions"]["torch"] and "pyautoattack" in report["versions"] and "cudnn" in report["versions"]
    assert "--eval-only" in report["command"]
    out = capsys.readouterr().out
    assert "evaluation only (weights: random init)" in out and "pgd20" in out and "s / CIFAR epoch" not in out


def test_weights_are_loaded_before_the_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write(tmp_path / "r.toml", RECIPE)
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(run_dir), "--quiet"]) == 0
    trained = json.loads((run_dir / "result.json").read_text())["metrics"]["clean_acc"]
    report = _bench(recipe, tmp_path / "b.json", "--weights", "run")  # a path from the working directory
    assert report["student_weights"] == "run"
    assert report["eval"]["clean_acc"] == pytest.approx(trained, abs=1e-9)  # same weights, same 32 images
    assert "--weights" in report["eval"]["note"]
    assert "--weights run" in report["command"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baseline"], "--eval-only times the evaluation alone"),
        (["--no-eval"], "--eval-only times the evaluation alone"),
        (["--eval-n", "0"], "--eval-only times the evaluation alone"),
        (["--weights", "nowhere"], "student checkpoint nowhere not found"),
    ],
)
def test_eval_only_mistakes_are_one_line_errors(tmp_path, capsys, extra, message):
    recipe = write(tmp_path / "r.toml", RECIPE)
    assert main(["bench", str(recipe), "--eval-only", "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
