"""Small frictions of a first session (issue 18, point 8), each checked on the captured CLI output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdbench.cli import main
from kdbench.testing import tiny_recipe

from .conftest import write

RECIPE = tiny_recipe("cut", seed=None)

DISTIL = """
name = "cut_kd"
[data]
dataset = "fake"
options = {train_size = 64, test_size = 32, image_size = 16}
[teacher]
model = "resnet8"
checkpoint = "weights/teacher.pt"
[student]
model = "resnet8"
[method]
name = "kd"
[eval]
attacks = ["clean"]
"""


def test_validate_refuses_a_missing_teacher_checkpoint(tmp_path, capsys):
    recipe = write(tmp_path / "kd.toml", DISTIL)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kdbench: error: {recipe}: teacher.checkpoint: file '{tmp_path / 'weights' / 'teacher.pt'}' not found; "
        "give the path of a weights file or a finished run folder, relative to the recipe"
    )


def test_run_names_the_key_and_resolved_path_of_a_missing_checkpoint(tmp_path, capsys):
    recipe = write(tmp_path / "kd.toml", DISTIL)
    assert main(["run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"teacher.checkpoint: file '{tmp_path / 'weights' / 'teacher.pt'}' not found" in err


def test_run_accepts_device_and_explains_resume(tmp_path, capsys):
    recipe = write(tmp_path / "r.toml", RECIPE)
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--device", "cpu", "--resume", "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "--resume is not needed: resuming is automatic" in captured.err
    assert 'device = "cpu"' in (out / "recipe.toml").read_text()
    assert "with --set train.device=cpu" in (out / "recipe.toml").read_text()


def test_show_knows_the_evaluation_attacks(capsys):
    assert main(["show", "autoattack"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("evaluation attack autoattack")
    assert "APGD-CE, APGD-T, FAB-T, Square" in out
    assert main(["show", "pgd50"]) == 0
    assert "k steps of PGD" in capsys.readouterr().out
    assert main(["list", "evaluation"]) == 0
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()]
    assert ["evaluation", "autoattack"] in rows and ["evaluation", "autoattack_custom"] in rows


def test_show_writes_budgets_as_fractions(capsys):
    assert main(["show", "pgd"]) == 0
    out = capsys.readouterr().out
    assert 'eps: float >= 0 (default "8/255")' in out
    assert 'step_size: float >= 0 (default "2/255")' in out
    assert "0.0313" not in out


def test_show_into_a_closed_pipe_has_no_traceback():
    proc = subprocess.run(
        f"{sys.executable} -m kdbench show pgd | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.startswith("attack pgd")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "key"),
    [('train.lr="0.1"', "train.lr"), ('train.epochs="2"', "train.epochs"), ('data.augment="true"', "data.augment")],
)
def test_quoted_numbers_and_booleans_are_refused(tmp_path, capsys, override, key):
    recipe = write(tmp_path / "r.toml", RECIPE)
    assert main(["validate", str(recipe), "--set", override]) == 2
    err = capsys.readouterr().err
    assert f"{key}: Input should be a valid" in err and "write it without quotes" in err


def test_quoted_numbers_in_a_method_config_are_refused(tmp_path, capsys):
    recipe = write(
        tmp_path / "r.toml",
        RECIPE.replace('name = "natural"', 'name = "natural"').replace("[train]", '[attack]\nsteps = "3"\n[train]'),
    )
    assert main(["validate", str(recipe)]) == 2
    assert "attack.steps: Input should be a valid integer" in capsys.readouterr().err
