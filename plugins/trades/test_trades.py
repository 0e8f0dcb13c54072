import math

import pytest
import torch

from kdbench.testing import MethodConformance, make_context


class TestTRADESConformance(MethodConformance):
    method = "trades"


def test_trades_kl_golden_value():
    from kdbench_plugins.trades import trades_kl

    clean = torch.tensor([[1.0, 2.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0, 1.0]])
    p = [math.exp(v) for v in (1.0, 2.0, 0.0)]
    q = [math.exp(v) for v in (0.0, 1.0, 1.0)]
    p = [v / sum(p) for v in p]
    q = [v / sum(q) for v in q]
    expected = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    assert trades_kl(clean, adv).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.2743277, rel=1e-6)


def test_trades_starts_from_gaussian_noise_and_weights_kl_by_beta():
    from kdbench_plugins.trades import TRADES

    assert TRADES.attack_defaults["random_start"] == "normal"
    method = TestTRADESConformance().build()
    ctx = make_context(method, seed=2)
    terms = method.loss(ctx)
    assert terms.keys() == {"ce", "kl"}
    assert terms["kl"] >= 0
