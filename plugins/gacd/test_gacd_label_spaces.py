"""GACD across label spaces: teacher-logit options refused, feature-only options working, and a run that
distils a 5-class teacher into a 10-class student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdbench import METHODS, MethodSetup, UserError
from kdbench.models.base import NetworkSpec
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe
from kdbench.testing import TinyNet, make_context, tiny_recipe

# ------------------------------------------------------------------------------ label spaces

CROSS = MethodSetup(10, 16, 24, 5, 64, torch.device("cpu"))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_source": "adversarial"},
        {"weight_source": "off", "attack_objective": "kl"},
        {"weight_source": "off", "kd_weight": 1.0},
    ],
)
def test_teacher_logit_options_are_refused_across_label_spaces(options):
    cls = METHODS.get("gacd")
    with pytest.raises(UserError, match="teacher has 5 classes and the student 10") as info:
        cls(cls.Config(**options), CROSS)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "options", [{"weight_source": "off"}, {"weight_source": "teacher_max", "attack_objective": "ce"}]
)
def test_feature_only_options_work_across_label_spaces(options):
    cls = METHODS.get("gacd")
    method = cls(cls.Config(**options), CROSS)
    torch.manual_seed(1)
    teacher = TinyNet(NetworkSpec(5, 16, (0.5,) * 3, (0.25,) * 3), width=12).eval().requires_grad_(False)
    ctx = make_context(method, teacher=teacher)
    terms = method.loss(ctx)
    assert all(torch.isfinite(v) for v in terms.values())


TEACHER = tiny_recipe("teacher5", data_options="num_classes = 5", train_extra="deterministic = true")

STUDENT = tiny_recipe(
    "gacd_transfer",
    seed=3,
    method="gacd",
    method_extra='weight_source = "off"',
    attack="steps = 2",
    teacher='[teacher]\nrecipe = "teacher.toml"',
    epochs=2,
    train_extra="deterministic = true",
)


def test_transfer_run_from_a_5_class_teacher_to_a_10_class_student(tmp_path: Path):
    (tmp_path / "teacher.toml").write_text(TEACHER)
    path = tmp_path / "student.toml"
    path.write_text(STUDENT)
    outcome = run_recipe(load_recipe(path), tmp_path / "gacd")
    final = outcome.result.train.final
    assert final["epoch"] == 2
    assert {"loss/ce_adv", "loss/gacd_t", "loss/gacd_s"} <= set(final)
    with pytest.raises(UserError, match="teacher has 5 classes and the student 10"):
        run_recipe(load_recipe(path, ["method.weight_source=clean"]), tmp_path / "gacd_clean")
