"""The shipped comparison recipes: a comparison is a swap of one entry."""

from __future__ import annotations

import tomllib

from kdbench.recipe import load_recipe

from .conftest import REPO

METHODS = ["kd", "ard", "rslad", "crd", "gacd", "iad", "adaad", "mtard"]


def test_method_recipes_differ_only_in_method():
    raws = {m: tomllib.loads((REPO / "recipes" / f"{m}_cifar10.toml").read_text()) for m in METHODS}
    # MTARD's second teacher is allowed to be the one other difference.
    reference = {k: v for k, v in raws["kd"].items() if k not in ("name", "method")}
    for method, raw in raws.items():
        assert raw["method"]["name"] == method
        assert {k: v for k, v in raw.items() if k not in ("name", "method", "teachers")} == reference, method
    assert raws["mtard"]["teachers"] == {"natural": {"recipe": "teacher_cifar10_resnet18.toml"}}
    assert all("teachers" not in raw for m, raw in raws.items() if m != "mtard")


def test_each_method_keeps_its_official_attack_start():
    starts = {m: load_recipe(REPO / "recipes" / f"{m}_cifar10.toml").attack_config.random_start for m in METHODS}
    assert starts["rslad"] == "normal"  # x + 0.001 N(0, 1), as in the RSLAD code
    assert starts["ard"] == starts["gacd"] == starts["iad"] == "uniform"
    assert starts["adaad"] == starts["mtard"] == "normal"  # AT_helper.py, mtard_loss.py: x + 0.001 N(0, 1)


def test_distillation_recipes_use_the_robust_teacher():
    for method in METHODS:
        resolved = load_recipe(REPO / "recipes" / f"{method}_cifar10.toml")
        assert resolved.teacher_recipe is not None
        assert resolved.teacher_recipe.recipe.method.name == "pgd_at"
        assert resolved.recipe.student.model == "mobilenet_v2"
