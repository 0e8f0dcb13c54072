import math
from typing import ClassVar

import pytest
import torch

from kdbench import ModelOutput
from kdbench.models.base import NetworkSpec
from kdbench.testing import MethodConformance, TinyNet, make_context


class TestARDConformance(MethodConformance):
    method = "ard"


class TestARDWithCE(MethodConformance):
    method = "ard"
    options: ClassVar[dict] = {"alpha": 0.7, "temperature": 4.0, "reduction": "batchmean"}


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _reference_ard(zs_adv, zs_clean, zt, y, t: float, a: float, reduction: str) -> float:
    """ARD's loss with plain Python loops, independent of the plugin's code."""
    n, c = zs_adv.shape
    kl = 0.0
    for b in range(n):
        ps, pt = _softmax(zs_adv[b].tolist(), t), _softmax(zt[b].tolist(), t)
        kl += sum(q * math.log(q / p) for q, p in zip(pt, ps, strict=True))
    kl = kl / (n * c) if reduction == "mean" else kl / n
    ce = 0.0
    for b in range(n):
        row = zs_clean[b].tolist()
        ce += -row[int(y[b])] + math.log(sum(math.exp(v) for v in row))
    return a * t * t * kl + (1 - a) * ce / n


class _View:
    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class _Ctx:
    """Just the views ARD's loss reads, on fixed tensors."""

    def __init__(self, zs_adv, zs_clean, zt, y):
        self.student_adv, self.student_clean, self.teacher_clean, self.y = _View(zs_adv), _View(zs_clean), _View(zt), y


ZS_ADV = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
ZS_CLEAN = torch.tensor([[1.5, 0.0, -0.5], [-1.0, 2.0, 0.0]])
ZT = torch.tensor([[1.0, 0.0, -1.0], [3.0, -2.0, 0.0]])
Y = torch.tensor([0, 2])


@pytest.mark.parametrize(
    ("options", "pinned"),
    [
        ({}, 0.4687185),  # the official defaults: T = 30, a = 1, KL mean over batch x classes
        ({"reduction": "batchmean"}, 1.4061554),  # 3x the default: C = 3 classes
        ({"temperature": 4.0, "alpha": 0.5}, 0.8439656),
    ],
)
def test_ard_golden_value(options, pinned):
    from kdbench_plugins.ard import ARD, ARDConfig

    config = ARDConfig(**options)
    method = ARD(config, setup=None)  # type: ignore[arg-type]
    terms = method.loss(_Ctx(ZS_ADV, ZS_CLEAN, ZT, Y))  # type: ignore[arg-type]
    expected = _reference_ard(ZS_ADV, ZS_CLEAN, ZT, Y, config.temperature, config.alpha, config.reduction)
    total = float(sum(terms.values()))
    # float32 at T = 30: log p_T - log p_S cancels to ~1e-3, so only ~4 significant digits survive.
    assert total == pytest.approx(expected, rel=1e-4)
    assert total == pytest.approx(pinned, rel=1e-4)
    assert ("ce" in terms) == (config.alpha < 1)


def test_ard_default_skips_the_clean_forward_and_attacks_with_ce():
    method = TestARDConformance().build()
    ctx = make_context(method)
    terms = method.loss(ctx)
    assert terms.keys() == {"kd_adv"}
    assert ctx.computed("x_adv") is not None
    assert ctx.computed("student_clean") is None
    # The attack objective is the per-sample cross-entropy -log p_y(x').
    ctx.y = torch.tensor([1])
    out = ModelOutput(torch.tensor([[2.0, 0.0, -1.0]]), torch.zeros(1, 4))
    expected = math.log(sum(math.exp(v) for v in (2.0, 0.0, -1.0))) - 0.0
    assert method.attack_objective(ctx)(out).item() == pytest.approx(expected, rel=1e-6)


def test_ard_attacks_with_student_batchnorm_in_train_mode():
    method = TestARDConformance().build()
    student = TinyNet(NetworkSpec(10, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    modes: list[bool] = []
    forward_all = student.forward_all

    def recording(x):
        modes.append(student.training)
        return forward_all(x)

    student.forward_all = recording  # type: ignore[method-assign]
    student.eval()  # the context must switch it to train mode for the attack, then restore eval
    ctx = make_context(method, student=student)
    ctx.x_adv  # noqa: B018 - runs the 2-step attack
    assert modes == [True, True]
    assert not student.training
