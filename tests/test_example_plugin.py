"""The third-party example plugin (examples/kdbench-example-plugin), when it is installed.

It is a separate distribution, registered through the same ``kdbench.methods`` entry-point group as
the built-in methods. CI installs it with
``pip install --no-deps --no-build-isolation -e examples/kdbench-example-plugin``; without it these
tests skip.
"""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from kdbench.cli import main
from kdbench.engine.progress import make_progress
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from .conftest import REPO

DISTRIBUTION = "kdbench-example-plugin"
EXAMPLE = REPO / "examples" / "kdbench-example-plugin"


def _installed() -> bool:
    try:
        metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _installed(),
    reason=f"{DISTRIBUTION} is not installed: pip install --no-deps --no-build-isolation -e {EXAMPLE}",
)


def test_list_methods_names_feature_mse_and_its_distribution(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] == ["feature_mse"]]
    assert rows, f"kdbench list methods does not show feature_mse:\n{out}"
    assert rows[0][2:4] == [DISTRIBUTION, metadata.version(DISTRIBUTION)], out
    # The built-in iad is kdbench's own, not the example's (the example used to ship one).
    iad = [line.split() for line in out.splitlines() if line.split()[1:2] == ["iad"]]
    assert iad and iad[0][2] == "kdbench", out


def test_quick_recipe_runs_end_to_end(tmp_path):
    resolved = load_recipe(EXAMPLE / "recipes" / "feature_mse_quick.toml")
    outcome = run_recipe(
        resolved, tmp_path / "feature_mse_quick", runs_dir=tmp_path / "runs", progress=make_progress(True)
    )
    result = outcome.result.dump()
    assert result["method"] == "feature_mse"
    assert result["env"]["plugins"][DISTRIBUTION] == metadata.version(DISTRIBUTION)
    assert 0.0 <= result["metrics"]["clean_acc"] <= 1.0
    rows = [json.loads(line) for line in (outcome.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("loss/feat" in row and "loss/ce" in row for row in rows)
    assert all(row["attack_eps"] == pytest.approx(8 / 255) for row in rows)  # adversarial = true attacks
