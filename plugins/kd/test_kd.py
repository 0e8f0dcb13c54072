import math
from typing import ClassVar

import pytest
import torch

from kdbench.testing import MethodConformance, make_context


class TestKDConformance(MethodConformance):
    method = "kd"


class TestKDPureDistillation(MethodConformance):
    method = "kd"
    options: ClassVar[dict] = {"alpha": 1.0, "temperature": 1.0}


def _reference_kd(zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, t: float, a: float) -> float:
    """Hinton's loss written out with plain Python loops (independent of the plugin's code)."""
    total_kl, total_ce = 0.0, 0.0
    for b in range(zs.shape[0]):
        ps = [math.exp(v / t) for v in zs[b].tolist()]
        pt = [math.exp(v / t) for v in zt[b].tolist()]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        total_kl += sum(t * math.log(t / s) for t, s in zip(pt, ps, strict=True))
        logits = zs[b].tolist()
        total_ce += -logits[int(y[b])] + math.log(sum(math.exp(v) for v in logits))
    n = zs.shape[0]
    return a * t * t * total_kl / n + (1 - a) * total_ce / n


def test_kd_golden_value():
    # Fixed tensors: the loss must equal the direct formula, and this pinned number.
    from kdbench_plugins.kd import KD, KDConfig

    zs = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
    zt = torch.tensor([[1.0, 0.0, -1.0], [3.0, -2.0, 0.0]])
    y = torch.tensor([0, 2])
    expected = _reference_kd(zs, zt, y, t=4.0, a=0.9)
    method = KD(KDConfig(), setup=None)  # type: ignore[arg-type]

    class View:
        def __init__(self, logits):
            self.logits = logits

    class Ctx:
        student_clean = View(zs)
        teacher_clean = View(zt)

    Ctx.y = y
    terms = method.loss(Ctx())  # type: ignore[arg-type]
    total = float(sum(terms.values()))
    assert total == pytest.approx(expected, rel=1e-6)
    assert total == pytest.approx(1.2767045, rel=1e-6)


def test_kd_uses_no_attack():
    method = TestKDConformance().build()
    ctx = make_context(method)
    assert method.attack_objective(ctx) is None
    method.loss(ctx)
    assert ctx.computed("x_adv") is None
