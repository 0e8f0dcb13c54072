"""Limits that `kdbench validate` checks, instead of `run` discovering them (a crash, an OOM kill, an
hour spent expanding a sweep): each is one line naming the file, the key and the limit, exit 2."""

from __future__ import annotations

import pytest

from kdbench.cli import main

from ..conftest import write
from .conftest import TINY_RECIPE

SWEEP = '\n[sweep]\n"train.lr" = [{lrs}]\nseed = [{seeds}]\n'


def _cases(tmp_path):  # type: ignore[no-untyped-def]
    long_name = "x" * 250
    return {
        "name-too-long": (TINY_RECIPE.replace('name = "tiny"', f'name = "{long_name}"'), "name: "),
        "seed-above-torch": (TINY_RECIPE.replace("seed = 3", f"seed = {2**64}"), "seed: "),
        "sweep-too-large": (
            TINY_RECIPE
            + SWEEP.format(lrs=", ".join(str(0.01 * i) for i in range(1, 201)), seeds=", ".join(map(str, range(60)))),
            "sweep: the sweep has 12000 variants, above the limit of 10000; ",
        ),
        "fake-too-large": (
            TINY_RECIPE.replace("train_size = 96", "train_size = 9000000").replace(
                "image_size = 16", "image_size = 512"
            ),
            "data.options: ",
        ),
    }


@pytest.mark.parametrize("case", ["name-too-long", "seed-above-torch", "sweep-too-large", "fake-too-large"])
def test_limits_are_refused_by_validate(tmp_path, capsys, case):
    text, expected = _cases(tmp_path)[case]
    recipe = write(tmp_path / "r.toml", text)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kdbench: error: {recipe}: {expected}"), err


def test_extends_depth_is_limited(tmp_path, capsys):
    write(tmp_path / "r0.toml", TINY_RECIPE)
    for i in range(1, 40):
        write(tmp_path / f"r{i}.toml", f'extends = "r{i - 1}.toml"\n')
    assert main(["validate", str(tmp_path / "r39.toml")]) == 2
    err = capsys.readouterr().err
    assert "extends: extends is nested more than 32 deep; flatten the chain" in err
    assert err.count("\n") == 1
