import math
from typing import ClassVar

import pytest
import torch

from kdbench import ModelOutput
from kdbench.models.base import NetworkSpec
from kdbench.testing import MethodConformance, TinyNet, make_context

SPEC = NetworkSpec(10, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class TestRSLADConformance(MethodConformance):
    method = "rslad"


class TestRSLADAdversarialOnly(MethodConformance):
    method = "rslad"
    options: ClassVar[dict] = {"clean_weight": 0, "scale": 10, "reduction": "batchmean"}


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _official_kl(zs, zt, reduction: str) -> float:
    """The official elementwise ``-b*a + b*log(b + 1e-5)`` with plain Python loops."""
    n, c = zs.shape
    total = 0.0
    for i in range(n):
        a = [math.log(p) for p in _softmax(zs[i].tolist())]
        b = _softmax(zt[i].tolist())
        total += sum(-bj * aj + bj * math.log(bj + 1e-5) for aj, bj in zip(a, b, strict=True))
    return total / (n * c) if reduction == "mean" else total / n


class _View:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class _Ctx:
    def __init__(self, zs_adv, zs_clean, zt):
        self.student_adv, self.student_clean, self.teacher_clean = _View(zs_adv), _View(zs_clean), _View(zt)


ZS_ADV = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
ZS_CLEAN = torch.tensor([[1.5, 0.0, -0.5], [-1.0, 2.0, 0.0]])
ZT = torch.tensor([[1.0, 0.0, -1.0], [3.0, -2.0, 0.0]])


@pytest.mark.parametrize(
    ("options", "pinned"),
    [
        ({}, 0.2529373),  # official CIFAR-10: 5/6 and 1/6, mean over batch x classes
        ({"reduction": "batchmean"}, 0.7588120),  # 3x: C = 3
        ({"scale": 10, "adv_weight": "1/2", "clean_weight": "1/2"}, 3.4486383),
    ],
)
def test_rslad_golden_value(options, pinned):
    from kdbench_plugins.rslad import RSLAD, RSLADConfig

    c = RSLADConfig(**options)
    terms = RSLAD(c, setup=None).loss(_Ctx(ZS_ADV, ZS_CLEAN, ZT))  # type: ignore[arg-type]
    expected = c.scale * (
        c.adv_weight * _official_kl(ZS_ADV, ZT, c.reduction) + c.clean_weight * _official_kl(ZS_CLEAN, ZT, c.reduction)
    )
    total = float(sum(terms.values()))
    assert total == pytest.approx(expected, rel=1e-6)
    assert total == pytest.approx(pinned, rel=1e-6)


def test_rslad_kl_differs_from_the_exact_kl_by_a_student_independent_constant():
    from kdbench_plugins.rslad import rslad_kl

    zt = ZT.clone()
    p = torch.softmax(zt, dim=1)
    for zs in (ZS_ADV, ZS_CLEAN):
        zs = zs.clone().requires_grad_(True)
        exact = torch.nn.functional.kl_div(torch.log_softmax(zs, 1), p, reduction="none").mean()
        ours = rslad_kl(zs, p)
        (g_exact,) = torch.autograd.grad(exact, zs)
        (g_ours,) = torch.autograd.grad(ours, zs)
        assert torch.allclose(g_exact, g_ours, atol=1e-7)
        assert (ours - exact).abs().item() < 1e-4


def test_rslad_attack_objective_is_the_per_sample_kl_to_the_teacher():
    from kdbench_plugins.rslad import RSLAD

    method = TestRSLADConformance().build()
    ctx = make_context(method)
    p = torch.softmax(ctx.teacher_clean.logits, dim=1)
    z = torch.randn_like(p)
    expected = (p * (p.log() - torch.log_softmax(z, 1))).sum(1)
    got = method.attack_objective(ctx)(ModelOutput(z, torch.zeros(len(z), 1)))
    assert torch.allclose(got, expected, atol=1e-6)
    assert RSLAD.attack_defaults == {"random_start": "normal"}


def test_rslad_runs_the_teacher_once_and_attacks_in_eval_mode():
    method = TestRSLADConformance().build()
    student = TinyNet(SPEC)
    teacher = TinyNet(SPEC, width=12).eval().requires_grad_(False)
    modes: list[bool] = []
    teacher_calls: list[int] = []
    s_forward, t_forward = student.forward_all, teacher.forward_all

    def student_recording(x):
        modes.append(student.training)
        return s_forward(x)

    def teacher_recording(x):
        teacher_calls.append(len(x))
        return t_forward(x)

    student.forward_all = student_recording  # type: ignore[method-assign]
    teacher.forward_all = teacher_recording  # type: ignore[method-assign]
    ctx = make_context(method, student=student, teacher=teacher)
    terms = method.loss(ctx)
    assert terms.keys() == {"kl_adv", "kl_clean"}
    assert len(teacher_calls) == 1  # shared by the attack and both loss terms
    # 2 attack steps in eval mode, then x' and x with the student in train mode
    assert modes == [False, False, True, True]


def test_rslad_refuses_an_empty_loss():
    from kdbench_plugins.rslad import RSLADConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="both 0"):
        RSLADConfig(adv_weight=0, clean_weight=0)
