import math
from typing import ClassVar

import pytest
import torch
from kdbench_plugins._golden import ZS_ADV, ZS_CLEAN, ZT_ADV, ZT_CLEAN, GoldenCtx, kl, softmax

from kdbench import RecipeError
from kdbench.recipe import resolve
from kdbench.testing import MethodConformance, make_context


class TestIADConformance(MethodConformance):
    """Defaults at epoch 0: before the warm-up (60), IAD is ARD at tau = 1."""

    method = "iad"


class TestIADIntrospecting(MethodConformance):
    """Past the warm-up, with the CE term and IAD-II's weighted teacher term."""

    method = "iad"
    epoch = 60
    options: ClassVar[dict] = {"alpha": 0.8, "temperature": 4.0, "weight_teacher_term": True}


def _reference(epoch: int, *, tau=1.0, a_weight=1.0, beta=0.1, begin=60, weight_teacher=False) -> float:
    """IAD-I (and IAD-II's weighting) as METHODS.md writes it, with plain Python floats."""
    n = len(ZS_ADV)
    trust = [softmax(ZT_ADV[i])[[0, 1][i]] ** beta for i in range(n)]
    on = epoch >= begin
    teacher = [tau * tau * kl(softmax(ZT_CLEAN[i], tau), softmax(ZS_ADV[i], tau)) for i in range(n)]
    if weight_teacher and on:
        teacher = [a * t for a, t in zip(trust, teacher, strict=True)]
    total = a_weight * sum(teacher) / n
    if on:
        total += a_weight * sum((1 - trust[i]) * kl(softmax(ZS_CLEAN[i]), softmax(ZS_ADV[i])) for i in range(n)) / n
    if a_weight < 1:
        ce = sum(-ZS_CLEAN[i][[0, 1][i]] + math.log(sum(math.exp(v) for v in ZS_CLEAN[i])) for i in range(n)) / n
        total += (1 - a_weight) * ce
    return total


def _iad(**options):
    from kdbench_plugins.iad import IAD, IADConfig

    return IAD(IADConfig(**options), setup=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("epoch", "options", "pinned"),
    [
        (59, {}, 0.18241267),  # METHODS.md: teacher term only before begin = 60
        (60, {}, 0.18713241),  # METHODS.md: + introspection 0.00471974
        (60, {"weight_teacher_term": True}, None),
        (0, {"alpha": 0.5, "temperature": 4.0, "warmup_epochs": 0}, None),
    ],
)
def test_iad_golden_value(epoch, options, pinned):
    terms = _iad(**options).loss(GoldenCtx(epoch))  # type: ignore[arg-type]
    total = float(sum(terms.values()))
    kwargs = {
        "tau": options.get("temperature", 1.0),
        "a_weight": options.get("alpha", 1.0),
        "begin": options.get("warmup_epochs", 60),
        "weight_teacher": options.get("weight_teacher_term", False),
    }
    assert total == pytest.approx(_reference(epoch, **kwargs), rel=1e-6)
    if pinned is not None:
        assert total == pytest.approx(pinned, rel=1e-6)
    assert ("introspect" in terms) == (epoch >= kwargs["begin"])


def test_iad_trust_values_of_methods_md():
    from kdbench_plugins.iad import teacher_trust

    # beta = 0.1 maps p = 0.5, 0.1, 0.01 to a = 0.933033, 0.794328, 0.630957
    p = torch.tensor([0.5, 0.1, 0.01])
    logits = torch.stack([p.log(), (1 - p).log()], dim=1)
    a = teacher_trust(logits, torch.zeros(3, dtype=torch.long), 0.1)
    assert a.tolist() == pytest.approx([0.933033, 0.794328, 0.630957], abs=1e-6)
    golden = teacher_trust(torch.tensor(ZT_ADV), torch.tensor([0, 1]), 0.1)
    assert golden.tolist() == pytest.approx([0.9413756, 0.9342353], abs=1e-7)


def test_trust_comes_from_the_teacher_on_x_adv_and_the_target_from_the_teacher_on_x():
    base = float(sum(_iad().loss(GoldenCtx(60)).values()))
    ctx = GoldenCtx(60)
    ctx.teacher_adv.logits = torch.tensor(ZT_CLEAN, dtype=torch.float64)  # a from T(x) instead
    assert float(sum(_iad().loss(ctx).values())) != pytest.approx(base, rel=1e-6)
    ctx = GoldenCtx(60)
    ctx.teacher_clean.logits = torch.tensor(ZT_ADV, dtype=torch.float64)  # KL target from T(x') instead
    assert float(sum(_iad().loss(ctx).values())) != pytest.approx(base, rel=1e-6)


def test_student_clean_gets_gradient_only_from_rows_the_teacher_is_not_sure_of():
    ctx = GoldenCtx(60, grad=True)
    ctx.teacher_adv.logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 1.0, 0.5]], dtype=torch.float64)  # a_0 = 1
    terms = _iad().loss(ctx)  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(terms["introspect"], [ctx.student_clean.logits])
    assert grad[0].abs().sum() == 0
    assert grad[1].abs().sum() > 0


def test_before_the_warmup_iad_skips_the_teacher_on_x_adv_and_the_clean_pass():
    method = TestIADConformance().build()
    ctx = make_context(method)
    assert method.loss(ctx).keys() == {"kd_adv"}
    assert ctx.computed("x_adv") is not None
    assert ctx.computed("teacher_adv") is None
    assert ctx.computed("student_clean") is None
    ctx = make_context(method, epoch=60)
    assert method.loss(ctx).keys() == {"kd_adv", "introspect"}
    assert ctx.computed("teacher_adv") is not None


def test_iad_attacks_with_ce_in_train_mode_from_a_uniform_start():
    from kdbench_plugins.iad import IAD

    assert IAD.attack_bn_mode == "train"
    assert IAD.attack_defaults == {}  # the attack's default start: uniform


def test_a_warmup_beyond_the_run_is_a_one_line_error_naming_the_key():
    raw = {
        "name": "x",
        "data": {"dataset": "fake"},
        "teacher": {"model": "resnet8", "checkpoint": "t.pt"},
        "student": {"model": "resnet8"},
        "method": {"name": "iad", "warmup_epochs": 60},
        "train": {"epochs": 60},
    }
    with pytest.raises(RecipeError, match=r"method\.warmup_epochs: .*never be on") as exc:
        resolve(raw)
    assert "\n" not in str(exc.value)
    raw["train"]["epochs"] = 61
    assert resolve(raw).method_config.warmup_epochs == 60  # type: ignore[attr-defined]
