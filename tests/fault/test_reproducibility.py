"""Reproducibility you can check: with train.deterministic the same recipe and seed give bitwise the same
weights on CPU (a different seed does not), and every result.json records what is needed to rerun it.

The recipe trains with PGD-AT (one step from a uniform random start), so the global RNG (attack
starts), the data order and the augmentation all take part; the weights are compared by a sha256 over
every tensor's bytes.
"""

from __future__ import annotations

import json
import platform
import re

import torch

import kdbench
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from ..conftest import write
from .conftest import TINY_RECIPE, metrics_rows, state_digest, weights

RECIPE = TINY_RECIPE.replace('name = "natural"', 'name = "pgd_at"').replace("epochs = 3", "epochs = 2") + (
    "\n[attack]\nsteps = 1\n"
)


def test_same_seed_is_bitwise_identical_and_another_seed_is_not(tmp_path):
    path = write(tmp_path / "repro.toml", RECIPE)
    resolved = load_recipe(path)
    assert resolved.recipe.train.deterministic
    first = run_recipe(resolved, tmp_path / "a").out_dir
    second = run_recipe(load_recipe(path), tmp_path / "b").out_dir
    other = run_recipe(load_recipe(path, ["seed=4"]), tmp_path / "c").out_dir

    assert state_digest(weights(first)) == state_digest(weights(second))
    assert metrics_rows(first) == metrics_rows(second)
    assert state_digest(weights(first)) != state_digest(weights(other))
    a, b = (json.loads((out / "result.json").read_text()) for out in (first, second))
    assert a["metrics"] == b["metrics"]
    assert a["recipe_hash"] == b["recipe_hash"] == resolved.hash


def test_result_records_seed_mode_versions_device_and_commit(tmp_path):
    path = write(tmp_path / "repro.toml", RECIPE.replace("epochs = 2", "epochs = 1"))
    out = run_recipe(load_recipe(path, ["seed=7"]), tmp_path / "out").out_dir
    result = json.loads((out / "result.json").read_text())
    assert result["seed"] == 7
    assert result["deterministic"] is True
    env = result["env"]
    assert env["torch"] == torch.__version__
    assert env["kdbench"] == kdbench.__version__
    assert env["python"] == platform.python_version()
    assert env["device"].startswith("cpu")
    assert "git_commit" in env  # None outside a git checkout
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", env["git_commit"])
    assert env["plugins"] == {"kdbench": kdbench.__version__}
    # the resolved recipe, every default filled in, travels with the result
    assert (out / "recipe.toml").read_text().splitlines()[0].endswith(result["recipe_hash"])
