"""Speed never changes results: bf16 autocast and channels_last give the loss of the plain fp32 path."""

from __future__ import annotations

import pytest
import torch

from kdbench import METHODS, MethodSetup
from kdbench.testing import make_context


def _build(name: str):
    cls = METHODS.get(name)
    setup = MethodSetup(
        num_classes=10,
        student_feature_dim=16,
        teacher_feature_dim=24,
        teacher_num_classes=10,
        dataset_size=64,
        device=torch.device("cpu"),
    )
    torch.manual_seed(0)
    return cls(cls.Config.model_validate({}), setup)


def _loss(name: str, *, bf16: bool = False, channels_last: bool = False) -> float:
    method = _build(name)
    ctx = make_context(method, seed=11, image_size=16)
    ctx.student.eval()  # BatchNorm running stats make the comparison exact in fp32
    if channels_last:
        ctx.x = ctx.x.contiguous(memory_format=torch.channels_last)
        ctx.student.to(memory_format=torch.channels_last)
        if ctx.teacher is not None:
            ctx.teacher.to(memory_format=torch.channels_last)
    if bf16:
        ctx.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    torch.manual_seed(5)  # the attack's random start
    terms = method.loss(ctx)
    return float(sum(t.detach().float() for t in terms.values()))


@pytest.mark.parametrize("name", ["natural", "kd", "pgd_at", "trades", "ard", "rslad", "crd", "gacd"])
def test_channels_last_gives_the_same_loss(name):
    # Same math in another memory order; only the attack's sign(grad) can flip on near-zero gradients.
    assert _loss(name, channels_last=True) == pytest.approx(_loss(name), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("name", ["natural", "kd", "pgd_at", "trades", "ard", "rslad", "crd", "gacd"])
def test_bf16_autocast_stays_close_to_fp32(name):
    # bf16 keeps 8 bits of mantissa: a few percent on the loss, through the attack included
    assert _loss(name, bf16=True) == pytest.approx(_loss(name), rel=5e-2, abs=5e-3)


def test_bf16_attack_stays_exactly_in_the_ball():
    method = _build("pgd_at")
    ctx = make_context(method, seed=3, attack_options={"steps": 5})
    ctx.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    x_adv = ctx.x_adv
    assert x_adv.dtype == torch.float32
    eps = torch.tensor(8 / 255, dtype=torch.float32)
    assert (x_adv - ctx.x).abs().max() <= eps
    assert x_adv.min() >= 0
    assert x_adv.max() <= 1
