"""Tests of the ``iad`` plugin: kdbench's conformance suite plus golden values of the loss.

Run with the package installed (``pip install -e .``): the conformance suite finds the method through
its entry point, exactly as a recipe does.
"""

import math
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from kdbench.recipe import load_recipe
from kdbench.testing import MethodConformance, make_context

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class TestIADConformance(MethodConformance):
    """Defaults: at epoch 0 the warm-up (60 epochs) is not over, so this is ARD at T = 1."""

    method = "iad"


class TestIADIntrospection(MethodConformance):
    """The trust-weighted introspection term on from the first epoch, plus the CE term."""

    method = "iad"
    options: ClassVar[dict] = {"warmup_epochs": 0, "alpha": 0.8, "temperature": 4.0}


# ------------------------------------------------------------------------------------ golden value


def _softmax(row: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _reference_iad(zs_adv, zs_clean, zt_clean, zt_adv, y, *, t, alpha, beta, introspect) -> float:
    """IAD-I's loss with plain Python loops, independent of the plugin's code."""
    n = len(y)
    kd = sum(_kl(_softmax(zt_clean[i], t), _softmax(zs_adv[i], t)) for i in range(n)) / n
    total = alpha * t * t * kd
    if introspect:
        trust = [_softmax(zt_adv[i])[y[i]] ** beta for i in range(n)]
        self_kl = [_kl(_softmax(zs_clean[i]), _softmax(zs_adv[i])) for i in range(n)]
        total += alpha * sum((1 - a) * k for a, k in zip(trust, self_kl, strict=True)) / n
    if alpha < 1:
        ce = sum(-zs_clean[i][y[i]] + math.log(sum(math.exp(v) for v in zs_clean[i])) for i in range(n)) / n
        total += (1 - alpha) * ce
    return total


class _View:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class _Ctx:
    """Just the views IAD's loss reads, on fixed tensors."""

    def __init__(self, epoch: int):
        self.student_adv, self.student_clean = _View(torch.tensor(ZS_ADV)), _View(torch.tensor(ZS_CLEAN))
        self.teacher_clean, self.teacher_adv = _View(torch.tensor(ZT_CLEAN)), _View(torch.tensor(ZT_ADV))
        self.y, self.epoch = torch.tensor(Y), epoch


ZS_ADV = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]]
ZS_CLEAN = [[1.5, 0.0, -0.5], [-1.0, 2.0, 0.0]]
ZT_CLEAN = [[1.0, 0.0, -1.0], [3.0, -2.0, 0.0]]
ZT_ADV = [[0.5, 0.5, -1.0], [0.0, -1.0, 1.0]]
Y = [0, 2]


@pytest.mark.parametrize(
    ("options", "epoch", "pinned"),
    [
        ({}, 59, 0.6208923),  # before the warm-up: ARD at T = 1, KL summed over classes, batch mean
        ({}, 60, 0.6373340),  # from epoch 60 (0-based) the introspection term is on
        ({"alpha": 0.5, "temperature": 4.0, "beta": 0.5, "warmup_epochs": 0}, 0, 1.3309187),
    ],
)
def test_iad_golden_value(options, epoch, pinned):
    from kdbench_example_plugin import IAD, IADConfig

    c = IADConfig(**options)
    terms = IAD(c, setup=None).loss(_Ctx(epoch))  # type: ignore[arg-type]
    expected = _reference_iad(
        ZS_ADV,
        ZS_CLEAN,
        ZT_CLEAN,
        ZT_ADV,
        Y,
        t=c.temperature,
        alpha=c.alpha,
        beta=c.beta,
        introspect=epoch >= c.warmup_epochs,
    )
    total = float(sum(terms.values()))
    assert total == pytest.approx(expected, rel=1e-6)
    assert total == pytest.approx(pinned, rel=1e-6)
    assert ("introspect" in terms) == (epoch >= c.warmup_epochs)


# ----------------------------------------------------------------------------------------- behaviour


def test_before_the_warmup_iad_is_ard_and_skips_the_extra_passes():
    method = TestIADConformance().build()
    ctx = make_context(method)  # epoch 0 < 60
    assert method.loss(ctx).keys() == {"kd_adv"}
    assert ctx.computed("x_adv") is not None
    assert ctx.computed("teacher_adv") is None
    assert ctx.computed("student_clean") is None


def test_after_the_warmup_the_teacher_judges_x_adv_and_both_student_views_get_gradients():
    method = TestIADIntrospection().build()
    ctx = make_context(method)
    terms = method.loss(ctx)
    assert terms.keys() == {"kd_adv", "introspect", "ce"}
    assert ctx.computed("teacher_adv") is not None
    clean, adv = ctx.student_clean.logits, ctx.student_adv.logits
    # As in IAD-I.py, p_S(x) is not detached in the introspection term.
    g_clean, g_adv = torch.autograd.grad(terms["introspect"], [clean, adv])
    assert g_clean.abs().sum() > 0
    assert g_adv.abs().sum() > 0


def test_trust_is_the_teachers_true_class_probability_to_the_beta():
    from kdbench_example_plugin import teacher_trust

    z = torch.tensor([[0.0, math.log(3.0)], [math.log(4.0), 0.0]])  # p_true = 3/4 (y=1), 4/5 (y=0)
    trust = teacher_trust(z, torch.tensor([1, 0]), beta=0.5)
    assert trust.tolist() == pytest.approx([math.sqrt(0.75), math.sqrt(0.8)], rel=1e-6)
    assert not trust.requires_grad


def test_the_quick_recipe_validates():
    resolved = load_recipe(RECIPES / "iad_quick.toml")
    assert resolved.recipe.method.name == "iad"
    assert resolved.method_config.warmup_epochs == 1  # type: ignore[attr-defined]
    assert resolved.teacher_recipe is not None
