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


def test_rslad_protocol_recipes_use_the_trades_zoo_teacher():
    """recipes/paper/{rslad,ard}_cifar10_trades_teacher.toml: the published protocol, validated, not run."""
    from kdbench.recipe import load_recipes

    rslad = load_recipes(REPO / "recipes" / "paper" / "rslad_cifar10_trades_teacher.toml")
    ard = load_recipes(REPO / "recipes" / "paper" / "ard_cifar10_trades_teacher.toml")
    assert [r.recipe.student.model for r in rslad] == ["resnet18", "mobilenet_v2"]
    for resolved in rslad + ard:
        r = resolved.recipe
        assert r.teacher is not None and r.teacher.zoo_name == "Zhang2019Theoretically"
        assert r.student.normalize == "none"  # the official students take raw pixels
        assert r.eval.eps == resolved.attack_config.eps == 8 / 255
        assert resolved.attack_config.steps == 10 and resolved.attack_config.step_size == 2 / 255
        assert r.train.batch_size == 128 and r.train.lr == 0.1 and r.train.weight_decay == 2e-4
        assert "autoattack" in r.eval.attacks and "cw" in r.eval.attacks
    for resolved in rslad:
        assert resolved.recipe.train.epochs == 300 and resolved.recipe.train.milestones == [215, 260, 285]
        assert resolved.attack_config.random_start == "normal"
    for resolved in ard:
        assert resolved.recipe.method.name == "ard" and resolved.recipe.train.epochs == 200
        assert resolved.recipe.train.milestones == [100, 150] and resolved.attack_config.random_start == "uniform"
