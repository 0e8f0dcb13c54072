"""Honest evaluation on small models (issue 13): masking and weak-attack flags with their severities (models
that hide their gradients, scale or softmax their logits or randomise their input each trip their flag;
an honest model trips none), steps scaled to eps, exact accuracies."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from kdbench.evaluation import evaluate
from kdbench.evaluation.attack_setup import attack_settings, default_step_size
from kdbench.evaluation.sanity import (
    SERIOUS,
    WARNING,
    Flag,
    check_below_reference,
    check_unbounded,
    paired_noise_tolerance,
)

# ------------------------------------------------------------------------------------ models for the checks


class Linear(nn.Module):
    """An honest differentiable classifier of 3x16x16 images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.flatten(1))


class Quantised(nn.Module):
    """Input quantised to 4 levels without a straight-through gradient: the gradient is exactly zero."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * 3) / 3)


class ScaledLogits(nn.Module):
    """Logits x 1e4: the softmax saturates and the cross-entropy's gradient underflows to zero."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * 1e4


class SoftmaxOutput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(dim=1)


class RandomisedInput(nn.Module):
    """Gaussian noise on the input at every pass, in eval mode too (a randomised defence)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def _data(net: nn.Module, n: int = 48) -> tuple[Tensor, Tensor]:
    """Images the honest model classifies correctly (its own predictions as labels)."""
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return x, net(x).argmax(1)


ATTACKS = ["clean", "fgsm", "pgd20", "cw"]


def _checks(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255) -> dict[str, str]:
    """check name -> severity of every flag ``evaluate`` raises (a cheap black box: 100 queries)."""
    report = evaluate(model, x, y, ATTACKS, eps=eps, batch_size=64, black_box_queries=100)
    flags = [f for f in report.flags if isinstance(f, Flag)]
    assert len(flags) == len(report.flags)  # every flag carries its severity
    return {f.check: f.severity for f in flags}


def test_honest_model_trips_no_flag():
    net = Linear()
    x, y = _data(net)
    assert _checks(net, x, y, eps=2 / 255) == {}
    assert _checks(net, x, y) == {}


def test_quantised_input_without_straight_through_gradient_is_caught():
    net = Quantised(Linear())
    x, y = _data(net)
    checks = _checks(net, x, y)
    # PGD, FGSM and CW all stand still (= clean); only kdbench's own checks see through it.
    assert checks["input_gradients"] == SERIOUS
    assert checks["unbounded"] == SERIOUS
    assert checks["black_box"] == SERIOUS


def test_scaled_logits_are_caught_by_the_zero_gradient_share():
    net = ScaledLogits(Linear())
    x, y = _data(net)
    assert _checks(net, x, y)["input_gradients"] == SERIOUS


def test_softmax_output_is_flagged_serious():
    net = SoftmaxOutput(Linear())
    x, y = _data(net)
    assert _checks(net, x, y)["logits"] == SERIOUS


def test_randomised_model_is_flagged_serious():
    net = RandomisedInput(Linear())
    x, y = _data(Linear())
    assert _checks(net, x, y)["deterministic"] == SERIOUS


def test_unbounded_check_scales_its_step_and_passes_an_honest_model():
    net = Linear()
    x, y = _data(net, 16)
    assert check_unbounded(net, x, y) == []
    assert check_unbounded(net, x, y, norm="l2") == []
    # With the old fixed 2/255 step, 20 steps travel at most 40/255: far from "any image".
    stuck = Quantised(Linear())
    flags = check_unbounded(stuck, x, stuck(x).argmax(1).detach())
    assert flags and flags[0].values["step_size"] == pytest.approx(0.25)


def test_attacks_below_pgd20_beyond_noise_say_which_to_trust():
    n = 400
    pgd = torch.zeros(n, dtype=torch.bool)
    pgd[:200] = True
    aa = pgd.clone()
    aa[:8] = False  # 2 points lower, beyond the noise 2 sqrt(8) / 400 = 1.4 points
    cw = pgd.clone()
    cw[:30] = False  # 7.5 points lower
    close = pgd.clone()
    close[:3] = False  # 0.75 points: noise
    flags = {f.check: f for f in check_below_reference({"pgd20": pgd, "autoattack": aa, "cw": cw})}
    assert flags["autoattack_below_pgd20"].severity == WARNING
    assert "trust autoattack" in flags["autoattack_below_pgd20"]
    assert flags["cw_below_pgd20"].severity == SERIOUS and "trust cw" in flags["cw_below_pgd20"]
    assert check_below_reference({"pgd20": pgd, "autoattack": close}) == []
    assert paired_noise_tolerance(n, 8) == pytest.approx(2 * 8**0.5 / n)


# ------------------------------------------------------------------------------------ steps and counts


def test_step_sizes_scale_with_eps_and_can_be_pinned():
    assert default_step_size(8 / 255, 20) == pytest.approx(2 / 255)  # the customary PGD-20 step
    assert default_step_size(64 / 255, 20) == pytest.approx(16 / 255)
    assert default_step_size(8 / 255, 5) == pytest.approx(4 / 255)  # few steps still travel 2.5 eps
    settings = attack_settings(["clean", "pgd20", "cw", "fgsm"], eps=64 / 255, norm="linf")
    assert settings["pgd20"]["step_size"] == pytest.approx(16 / 255) and settings["cw"]["steps"] == 30
    assert settings["pgd20"]["step_rule"] == "max(eps/4, 2.5*eps/steps)"
    pinned = attack_settings(["pgd20"], eps=64 / 255, norm="linf", step_size=2 / 255)
    assert pinned["pgd20"] == {**pinned["pgd20"], "step_size": 2 / 255, "step_rule": "pinned"}


def test_pgd20_at_a_large_eps_is_no_weaker_than_fgsm():
    net = Linear()
    x, y = _data(net)
    report = evaluate(net, x, y, ["clean", "fgsm", "pgd20"], eps=64 / 255, sanity=False)
    assert report.settings["pgd20"]["step_size"] == pytest.approx(16 / 255)
    assert report.robust["pgd20"] <= report.robust["fgsm"]


def test_accuracies_are_exact_fractions_of_stored_counts():
    net = Linear()
    x, y = _data(net, 50)
    y[:7] = (y[:7] + 1) % 10  # 43 of 50 right
    report = evaluate(net, x, y, ["clean", "fgsm"], sanity=False)
    d = report.to_dict()
    assert d["counts"]["clean"] == 43 and d["clean_acc"] == 0.86 and repr(d["clean_acc"]) == "0.86"
    assert d["robust"]["fgsm"] == d["counts"]["fgsm"] / 50 and d["robust"]["worst"] == d["counts"]["worst"] / 50
