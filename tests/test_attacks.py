"""Attacks against hand-computed references on tiny linear models, and the threat model's guarantees."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from kdbench.attacks.cw import CWConfig, CWLinf
from kdbench.attacks.fgsm import FGSM, FGSMConfig
from kdbench.attacks.objectives import cross_entropy, cw_margin, cw_margin_loss, kl_to
from kdbench.attacks.pgd import PGD, pgd
from kdbench.attacks.threat import ThreatModelConfig, float32_eps, linf_bounds, project, random_start
from kdbench.models.base import ModelOutput

EPS = 8 / 255
SHAPE = (4, 3, 4, 4)


def linear_fn(weight: Tensor, bias: Tensor | None = None):
    """A ModelFn computing logits = flatten(x) @ weight.T (+ bias)."""

    def fn(x: Tensor) -> ModelOutput:
        logits = x.flatten(1) @ weight.T
        if bias is not None:
            logits = logits + bias
        return ModelOutput(logits, x.flatten(1))

    return fn


def first_logit(out: ModelOutput) -> Tensor:
    """Objective z_0: its input gradient is weight[0], known analytically."""
    return out.logits[:, 0]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def signed_model(gen):
    """weight[0] has entries in {-1, 0, +1}: the sign of the gradient of z_0 is known per pixel."""
    d = math.prod(SHAPE[1:])
    w0 = torch.randint(-1, 2, (d,), generator=gen).float()
    weight = torch.cat([w0[None], torch.randn(2, d, generator=gen)])
    return linear_fn(weight), w0.view(1, *SHAPE[1:])


# ---------------------------------------------------------------------------------------------
# configs


def test_config_parses_fractions_and_defaults():
    config = ThreatModelConfig(eps="8/255", step_size="2/255")
    assert config.eps == pytest.approx(8 / 255)
    assert config.step_size == pytest.approx(2 / 255)
    assert (config.norm, config.steps, config.random_start) == ("linf", 10, "uniform")
    assert CWConfig().steps == 30
    assert CWConfig().step_size == pytest.approx(2 / 255)
    assert FGSMConfig().random_start == "none"
    assert ThreatModelConfig(norm="l2", eps=2.0).eps == 2.0  # L2 budgets above 1 are fine


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": -0.1},
        {"eps": "-8/255"},
        {"eps": 1.5},
        {"eps": 8},
        {"norm": "l2", "eps": -1},
        {"step_size": -1},
        {"steps": -1},
        {"norm": "l1"},
        {"random_start": "gaussian"},
        {"epsilon": 0.1},
        {"eps": float("nan")},
    ],
)
def test_config_rejects_invalid(kwargs):
    with pytest.raises(ValidationError):
        ThreatModelConfig(**kwargs)


def test_fgsm_config_is_linf_only():
    with pytest.raises(ValidationError):
        FGSMConfig(norm="l2")
    with pytest.raises(ValidationError):
        FGSMConfig(eps=2)


# ---------------------------------------------------------------------------------------------
# hand-computed references


def test_fgsm_moves_each_pixel_by_eps_in_the_gradient_sign(signed_model, gen):
    fn, sign = signed_model
    x = torch.rand(SHAPE, generator=gen)
    x_adv = FGSM().perturb(fn, x, first_logit)
    expected = (x + EPS * sign).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, atol=1e-6, rtol=0)
    assert torch.equal(x_adv[sign.expand_as(x) == 0], x[sign.expand_as(x) == 0])  # sign(0) = 0: untouched


def test_fgsm_clamps_to_the_image_range(signed_model):
    fn, sign = signed_model
    x = torch.where(sign > 0, torch.tensor(0.99), torch.tensor(0.01)).expand(SHAPE).contiguous()
    x_adv = FGSM().perturb(fn, x, first_logit)
    moved = sign.expand_as(x) != 0
    assert torch.all(x_adv[moved & (sign.expand_as(x) > 0)] == 1.0)
    assert torch.all(x_adv[moved & (sign.expand_as(x) < 0)] == 0.0)


@pytest.mark.parametrize(("steps", "moved"), [(1, 2 / 255), (3, 6 / 255), (4, 8 / 255), (10, 8 / 255)])
def test_pgd_linear_objective_reference(signed_model, steps, moved):
    """On z_0 = w.x every step adds alpha * sign(w) until the eps bound: x + min(k * alpha, eps) * sign(w)."""
    fn, sign = signed_model
    x = torch.full(SHAPE, 0.5)
    config = ThreatModelConfig(eps=EPS, step_size=2 / 255, steps=steps, random_start="none")
    x_adv = PGD(config).perturb(fn, x, first_logit)
    torch.testing.assert_close(x_adv, x + moved * sign, atol=1e-6, rtol=0)


def test_pgd_matches_textbook_loop_on_cross_entropy(gen):
    weight, bias = torch.randn(5, 48, generator=gen), torch.randn(5, generator=gen)
    fn = linear_fn(weight, bias)
    x = torch.rand(SHAPE, generator=gen)
    y = torch.randint(0, 5, (SHAPE[0],), generator=gen)
    ref = x.clone()
    for _ in range(7):
        ref.requires_grad_(True)
        loss = F.cross_entropy(fn(ref).logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, ref)
        ref = ref.detach() + 2 / 255 * grad.sign()
        ref = (x + (ref - x).clamp(-EPS, EPS)).clamp(0, 1)
    out = pgd(fn, x, cross_entropy(y), eps=EPS, step_size=2 / 255, steps=7, random_start="none")
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_l2_step_follows_normalised_gradient(gen):
    w0 = torch.randn(48, generator=gen)
    fn = linear_fn(torch.stack([w0, torch.zeros(48)]))
    x = torch.full(SHAPE, 0.5)
    out = pgd(fn, x, first_logit, norm="l2", eps=0.5, step_size=0.1, steps=3, random_start="none")
    expected = x + 0.3 * (w0 / w0.norm()).view(1, *SHAPE[1:])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# threat-model guarantees


@pytest.mark.parametrize("eps", [8 / 255, 2 / 255, 16 / 255, 0.1, 1 / 3, 0.5, 1e-7])
def test_linf_projection_is_exact_in_float32(eps, gen):
    x = torch.rand(64, 3, 8, 8, generator=gen)
    x[:8] *= 1e-3  # near 0 and near 1, where float32 rounding of x +- eps is coarsest / finest
    x[8:16] = 1 - x[8:16] * 1e-3
    far = x + torch.randn(x.shape, generator=gen)
    x_adv = project(far, x, norm="linf", eps=eps)
    assert (x_adv - x).abs().max() <= eps  # compared in float32, no tolerance
    assert float((x_adv - x).abs().max()) <= eps  # and in float64
    assert x_adv.min() >= 0
    assert x_adv.max() <= 1
    lo, hi = linf_bounds(x, eps)
    assert torch.all(lo <= x)
    assert torch.all(x <= hi)
    assert float32_eps(eps) <= eps


def test_l2_projection_stays_in_ball(gen):
    x = torch.rand(16, 3, 8, 8, generator=gen)
    far = x + 3 * torch.randn(x.shape, generator=gen)
    x_adv = project(far, x, norm="l2", eps=0.5)
    assert torch.all((x_adv - x).flatten(1).norm(dim=1) <= 0.5 * (1 + 1e-6))
    assert x_adv.min() >= 0
    assert x_adv.max() <= 1
    inside = x + 1e-3 * torch.randn(x.shape, generator=gen).clamp(-1, 1)
    torch.testing.assert_close(project(inside.clamp(0, 1), x, norm="l2", eps=0.5), inside.clamp(0, 1))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_attacks_stay_in_ball(norm, start, gen):
    weight, bias = torch.randn(5, 48, generator=gen), torch.randn(5, generator=gen)
    x = torch.rand(SHAPE, generator=gen)
    y = torch.randint(0, 5, (SHAPE[0],), generator=gen)
    eps = EPS if norm == "linf" else 0.5
    config = ThreatModelConfig(norm=norm, eps=eps, step_size=eps / 3, steps=5, random_start=start)
    x_adv = PGD(config).perturb(linear_fn(weight, bias), x, cross_entropy(y))
    dist = (x_adv - x).flatten(1)
    if norm == "linf":
        assert dist.abs().max() <= eps
    else:
        assert torch.all(dist.norm(dim=1) <= eps * (1 + 1e-6))
    assert x_adv.min() >= 0
    assert x_adv.max() <= 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("start", ["uniform", "normal", "none"])
def test_eps_zero_returns_x_exactly(norm, start, gen):
    weight = torch.randn(5, 48, generator=gen)
    x = torch.rand(SHAPE, generator=gen)
    y = torch.randint(0, 5, (SHAPE[0],), generator=gen)
    config = ThreatModelConfig(norm=norm, eps=0, step_size=2 / 255, steps=3, random_start=start)
    assert torch.equal(PGD(config).perturb(linear_fn(weight), x, cross_entropy(y)), x)
    if norm == "linf":
        fgsm = FGSM(FGSMConfig(eps=0, random_start=start))
        assert torch.equal(fgsm.perturb(linear_fn(weight), x, cross_entropy(y)), x)


def test_zero_steps_returns_the_projected_start(gen):
    x = torch.rand(SHAPE, generator=gen)
    fn = linear_fn(torch.randn(5, 48, generator=gen))
    none = ThreatModelConfig(steps=0, random_start="none")
    assert torch.equal(PGD(none).perturb(fn, x, first_logit), x)
    x_start = PGD(ThreatModelConfig(steps=0, random_start="uniform")).perturb(fn, x, first_logit)
    assert not torch.equal(x_start, x)
    assert (x_start - x).abs().max() <= EPS


def test_random_start_l2_uniform_inside_ball(gen):
    x = torch.rand(32, 3, 8, 8, generator=gen)
    start = random_start(x, norm="l2", eps=0.5, mode="uniform")
    norms = (start - x).flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.5 * (1 + 1e-6))
    assert torch.all(norms > 0)


# ---------------------------------------------------------------------------------------------
# gradients, precision


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward_all(self, x: Tensor) -> ModelOutput:
        feats = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1)
        return ModelOutput(self.head(feats), feats)


def test_parameter_grads_stay_none_and_no_grad_context_is_fine(gen):
    torch.manual_seed(0)
    net = TinyCNN()
    assert all(p.requires_grad for p in net.parameters())
    x = torch.rand(4, 3, 8, 8, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    with torch.no_grad():  # the attack switches grad mode on locally
        x_adv = CWLinf(CWConfig(steps=3)).perturb(net.forward_all, x, cw_margin(y))
    assert all(p.grad is None for p in net.parameters())
    assert not x_adv.requires_grad
    assert x_adv.grad_fn is None
    assert not torch.equal(x_adv, x)


def test_bf16_autocast_model_keeps_fp32_iterate_inside_ball(gen):
    torch.manual_seed(0)
    net = TinyCNN()
    x = torch.rand(4, 3, 8, 8, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    dtypes = []

    def bf16_model(images: Tensor) -> ModelOutput:
        dtypes.append(images.dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net.forward_all(images)
        assert out.logits.dtype == torch.bfloat16
        return out

    x_adv = PGD(ThreatModelConfig(steps=4)).perturb(bf16_model, x, cross_entropy(y))
    assert x_adv.dtype == torch.float32
    assert set(dtypes) == {torch.float32}
    assert (x_adv - x).abs().max() <= EPS
    assert not torch.equal(x_adv, x)
    # steps of 2/255 are visible in fp32: bf16 could not represent most of these pixel values
    assert not torch.equal(x_adv, x_adv.bfloat16().float())
    assert all(p.grad is None for p in net.parameters())


# ---------------------------------------------------------------------------------------------
# objectives


def test_cw_margin_loss_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    torch.testing.assert_close(cw_margin_loss(logits, y), torch.tensor([2.0, -1.0, -5.0]))
    torch.testing.assert_close(cw_margin_loss(logits, y, kappa=0.5), torch.tensor([0.5, -1.0, -5.0]))
    torch.testing.assert_close(cw_margin(y)(ModelOutput(logits.bfloat16(), logits)), torch.tensor([2.0, -1.0, -5.0]))


def test_cross_entropy_and_kl_objectives(gen):
    logits = torch.randn(4, 6, generator=gen)
    y = torch.randint(0, 6, (4,), generator=gen)
    out = ModelOutput(logits, logits)
    torch.testing.assert_close(cross_entropy(y)(out), F.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(kl_to(logits.softmax(1))(out), torch.zeros(4), atol=1e-6, rtol=0)
    p = torch.tensor([[1.0, 0, 0, 0, 0, 0]]).expand(4, 6)  # p_c = 0 terms count as 0
    torch.testing.assert_close(kl_to(p)(out), -logits.log_softmax(1)[:, 0])


def test_entry_points_resolve_to_these_classes():
    from kdbench import ATTACKS

    assert ATTACKS.get("pgd") is PGD
    assert ATTACKS.get("fgsm") is FGSM
    assert ATTACKS.get("cw") is CWLinf
