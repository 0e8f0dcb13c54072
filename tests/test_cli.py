"""The command line: exit codes, one-line errors, list/show/validate, and run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kdbench.cli import main
from kdbench.testing import tiny_recipe

from .conftest import REPO, write

RECIPE = tiny_recipe("cli", seed=None)


def test_validate_ok_and_errors(tmp_path, capsys):
    good = write(tmp_path / "good.toml", RECIPE)
    bad = write(tmp_path / "bad.toml", RECIPE.replace("epochs = 1", "epoch = 1"))
    assert main(["validate", str(good)]) == 0
    assert "ok (cli, hash" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"kdbench: error: {bad}: train.epoch: unknown key; did you mean 'epochs'? " + (
        "(choices: batch_size, channels_last, compile, compile_mode, deterministic, device, epochs, gamma, log_every, "
        "lr, milestones, momentum, nesterov, precision, schedule, val_attack, val_every, warmup_epochs, weight_decay)"
    )


def test_every_shipped_recipe_validates(capsys):
    recipes = sorted((REPO / "recipes").rglob("*.toml"))
    assert recipes
    assert main(["validate", *map(str, recipes)]) == 0, capsys.readouterr().err


def test_user_errors_have_no_traceback(tmp_path):
    bad = write(tmp_path / "bad.toml", RECIPE.replace('"natural"', '"naturall"'))
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", "run", str(bad)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"kdbench: error: {bad}: method.name: unknown method 'naturall'")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "missing.toml"], "missing.toml: file not found"),
        (["run", "RECIPE", "--set", "train.epochs"], "is not KEY=VALUE"),
        (["run", "RECIPE", "--set", "train.epochs=-1"], "train.epochs: Input should be greater than 0"),
        (["list", "widgets"], "unknown kind 'widgets'"),
        (["show", "kdd"], "no component named 'kdd'; did you mean 'kd'"),
    ],
)
def test_cli_errors_exit_2(tmp_path, capsys, argv, fragment):
    recipe = write(tmp_path / "r.toml", RECIPE)
    argv = [str(recipe) if a == "RECIPE" else a for a in argv]
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_list_and_show(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:3] == ["methods", "kd", "kdbench"] for line in out.splitlines())
    assert main(["list", "models", "resnet"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out
    assert "mobilenet_v2" not in out
    assert main(["show", "kd"]) == 0
    out = capsys.readouterr().out
    assert "temperature: float > 0 (default 4.0)" in out
    assert "Hinton" in out


def test_run_prints_result_and_writes_files(tmp_path, capsys):
    recipe = write(tmp_path / "r.toml", RECIPE)
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"result: {tmp_path / 'out' / 'result.json'}" in out
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["name"] == "cli"
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 0  # reused


def test_python_dash_m_entry():
    proc = subprocess.run([sys.executable, "-m", "kdbench", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "validate" in proc.stdout
