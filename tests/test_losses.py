"""kdbench.losses against direct formulas written with plain Python floats, plus pinned golden values."""

import math

import pytest
import torch

from kdbench.losses import kl_log_eps, reduce_kl, softened_kl, true_class_probability

ZS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]])
ZT = torch.tensor([[1.0, 0.0, -1.0], [3.0, -2.0, 0.0]])
Y = torch.tensor([0, 2])


def _softmax(row: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl_rows(zs, zt, t: float) -> list[float]:
    rows = []
    for s_row, t_row in zip(zs.tolist(), zt.tolist(), strict=True):
        ps, pt = _softmax(s_row, t), _softmax(t_row, t)
        rows.append(sum(q * math.log(q / p) for q, p in zip(pt, ps, strict=True)))
    return rows


@pytest.mark.parametrize(
    ("temperature", "reduction", "pinned"),
    [
        (1.0, "batchmean", 0.6208923),
        (4.0, "batchmean", 1.349491),
        (4.0, "mean", 0.4498303),
        (1.0, "sum", 1.241785),
        (30.0, "mean", 0.4687185),  # ARD's default: the value ARD's own golden test pins
    ],
)
def test_softened_kl_is_t_squared_times_the_kl_of_softened_predictions(temperature, reduction, pinned):
    rows = _kl_rows(ZS, ZT, temperature)
    per = {"batchmean": sum(rows) / 2, "mean": sum(rows) / 6, "sum": sum(rows)}[reduction]
    got = softened_kl(ZS, ZT, temperature, reduction).item()
    # float32 at T = 30: log p_T - log p_S cancels to ~1e-3, so only ~4 significant digits survive.
    rel = 1e-4 if temperature > 10 else 1e-6
    assert got == pytest.approx(temperature**2 * per, rel=rel)
    assert got == pytest.approx(pinned, rel=rel)


def test_softened_kl_per_sample_and_gradients_reach_both_sides():
    zs, zt = ZS.clone().requires_grad_(True), ZT.clone().requires_grad_(True)
    per_sample = softened_kl(zs, zt, 1.0, "none")
    assert per_sample.shape == (2,)
    assert per_sample.tolist() == pytest.approx(_kl_rows(ZS, ZT, 1.0), rel=1e-6)
    per_sample.sum().backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is not None and zt.grad.abs().sum() > 0  # the target is not detached


def test_kl_log_eps_is_the_official_rslad_mtard_kl():
    expected = 0.0
    for s_row, t_row in zip(ZS.tolist(), ZT.tolist(), strict=True):
        a = [math.log(p) for p in _softmax(s_row)]
        b = _softmax(t_row)
        expected += sum(-bj * aj + bj * math.log(bj + 1e-5) for aj, bj in zip(a, b, strict=True))
    probs = torch.softmax(ZT, dim=1).requires_grad_(True)
    got = kl_log_eps(ZS, probs, "mean")
    assert got.item() == pytest.approx(expected / 6, rel=1e-6)
    assert got.item() == pytest.approx(0.2069741, rel=1e-5)
    assert kl_log_eps(ZS, probs, "batchmean").item() == pytest.approx(expected / 2, rel=1e-6)
    assert not got.requires_grad  # the target is detached: nothing flows back to probs


def test_true_class_probability_and_reduce_kl():
    got = true_class_probability(ZT, Y)
    assert got.tolist() == pytest.approx([_softmax([1.0, 0.0, -1.0])[0], _softmax([3.0, -2.0, 0.0])[2]], rel=1e-6)
    assert got.tolist() == pytest.approx([0.6652409, 0.0471234], rel=1e-6)
    e = torch.arange(6.0).view(2, 3)
    assert reduce_kl(e, "mean").item() == 2.5
    assert reduce_kl(e, "batchmean").item() == 7.5
    assert reduce_kl(e, "none").tolist() == [3.0, 12.0]
    with pytest.raises(ValueError, match="unknown KL reduction"):
        reduce_kl(e, "avg")  # type: ignore[arg-type]
