"""Tests of the ``feature_mse`` plugin: kdbench's conformance suite plus golden values of the loss.

Run with the package installed (``pip install -e .``): the conformance suite finds the method through
its entry point, exactly as a recipe does.
"""

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from kdbench import METHODS, MethodSetup, ModelOutput
from kdbench.recipe import load_recipe
from kdbench.testing import MethodConformance, make_context

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class TestFeatureMSE(MethodConformance):
    method = "feature_mse"


class TestFeatureMSEAdversarial(MethodConformance):
    method = "feature_mse"
    options: ClassVar[dict[str, Any]] = {"adversarial": True, "ce_weight": 0.0}


class _Ctx:
    """Just the views `loss` reads, on fixed tensors."""

    def __init__(self, student: ModelOutput, teacher: ModelOutput, y: torch.Tensor):
        self.student_clean, self.teacher_clean, self.y = student, teacher, y


def _build(**options: Any):
    cls = METHODS.get("feature_mse")
    setup = MethodSetup(
        num_classes=3,
        student_feature_dim=2,
        teacher_feature_dim=2,
        teacher_num_classes=3,
        dataset_size=2,
        device=torch.device("cpu"),
    )
    method = cls(cls.Config(**options), setup)
    with torch.no_grad():
        method.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.5, -1.0]]))
        method.proj.bias.copy_(torch.tensor([0.0, 0.25]))
    return method


def test_golden_value():
    method = _build(feature_weight=0.5)
    fs = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    ft = torch.tensor([[1.5, -1.0], [0.0, 0.0]])
    zs = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 2])
    terms = method.loss(_Ctx(ModelOutput(zs, fs), ModelOutput(zs, ft), y))
    # projections [1, -1.25] and [-1, -0.75]; squared errors 0.25, 0.0625, 1, 0.5625: mean 0.46875
    assert terms["feat"].item() == pytest.approx(0.5 * 0.46875, rel=1e-6)
    # CE by hand: (-2 + log(e^2 + e^-1 + e^0.5) - 0.3 + log(e^0.1 + e^0.2 + e^0.3)) / 2 = 0.6216271
    assert sum(terms.values()).item() == pytest.approx(0.234375 + 0.6216271, rel=1e-6)


def test_ce_weight_zero_drops_the_term_and_adversarial_uses_the_attack():
    method = TestFeatureMSEAdversarial().build()
    ctx = make_context(method)
    terms = method.loss(ctx)
    assert terms.keys() == {"feat"}
    assert ctx.computed("x_adv") is not None
    assert ctx.computed("student_clean") is None


def test_clean_training_runs_no_attack():
    method = TestFeatureMSE().build()
    ctx = make_context(method)
    assert method.attack_objective(ctx) is None
    method.loss(ctx)
    assert ctx.computed("x_adv") is None


def test_the_quick_recipe_validates():
    resolved = load_recipe(RECIPES / "feature_mse_quick.toml")
    assert resolved.recipe.method.name == "feature_mse"
    assert resolved.method_config.adversarial  # type: ignore[attr-defined]
    assert resolved.teacher_recipe is not None
