"""bf16 autocast with an exact fp32 perturbation ball, and channels_last, on the training device."""

from __future__ import annotations

import pytest
import torch

from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import pgd
from kdbench.attacks.threat import float32_eps
from kdbench.build import build_network, place
from kdbench.engine.hardware import resolve_hardware
from kdbench.models.base import NetworkSpec

from .conftest import build, size_for

EPS = 8 / 255


def _net(device: str, channels_last: bool = False) -> torch.nn.Module:
    from kdbench._registry import MODELS

    size = size_for(device)
    spec = NetworkSpec(10, size.image_size, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    torch.manual_seed(0)
    net = build_network(size.model, MODELS.get(size.model).Config(), spec).eval()
    hw = resolve_hardware(device, "bf16", channels_last, False)
    return place(net, hw)


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_cpu(device):
    hw = resolve_hardware(device, "auto", None, False)
    assert hw.precision == ("bf16" if device == "cuda" else "fp32")
    assert hw.channels_last is (device == "cuda")


def test_bf16_autocast_keeps_the_fp32_ball_exact(device):
    net = _net(device)
    hw = resolve_hardware(device, "bf16", False, False)
    autocast = hw.autocast()
    size = size_for(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(size.batch, 3, size.image_size, size.image_size, generator=gen)
    x[:, :, :2] = 0.0  # pixels on the image range's edges: the clamp to [0, 1] matters there
    x[:, :, -2:] = 1.0
    x = x.to(device)
    y = torch.randint(0, 10, (size.batch,), generator=gen).to(device)

    def model(z):
        with autocast():
            return net.forward_all(z)

    assert model(x).logits.dtype == torch.bfloat16  # the passes really run in bf16
    x_adv = pgd(model, x, cross_entropy(y), eps=EPS, step_size=2 / 255, steps=10)
    assert x_adv.dtype == torch.float32 and x_adv.device == x.device
    delta = (x_adv - x).abs()
    assert delta.max().item() <= float32_eps(EPS)  # exact, in float32: not "eps + tolerance"
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    # Ten sign steps of 2/255 from a uniform start end mostly on the ball's faces: the attack moved.
    assert (delta >= float32_eps(EPS) * 0.999).float().mean().item() > 0.3
    with torch.no_grad():
        before = cross_entropy(y)(model(x)).mean()
        after = cross_entropy(y)(model(x_adv)).mean()
    assert after > before


def test_channels_last_model_and_batches_match_the_contiguous_path(device, tmp_path):
    built = build(tmp_path, device, "pgd_at", channels_last=True, precision="fp32")
    loader, student = built.loader, built.trainer.student
    _, _, (x, _, _) = next(built.batches())
    assert x.device.type == device and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    convs = [p for p in student.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    student.eval()
    reference = _contiguous_copy(student)
    with torch.no_grad():
        a = student(x)
        b = reference(x.contiguous())
    # TF32 convolutions on CUDA round differently per layout; the logits agree to a few parts per thousand.
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 if device == "cuda" else 1e-4)
    student.train()
    terms = built.run_steps(3 if device == "cuda" else 1)
    assert all(torch.isfinite(t).all() for step in terms for t in step.values())
    # The optimiser's in-place updates keep the layout: no silent conversion back to NCHW.
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in student.parameters() if p.dim() == 4)
    assert loader.channels_last


def _contiguous_copy(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize(
    "method",
    ["pgd_at", pytest.param("rslad", marks=pytest.mark.slow)],  # bf16 is emulated, slowly, on CPUs
)
def test_bf16_training_step_is_finite_with_fp32_weights(device, tmp_path, method):
    built = build(tmp_path, device, method, precision="bf16")
    losses = [sum(t.float() for t in step.values()) for step in built.run_steps(6)]
    values = torch.stack(losses).tolist()
    assert all(v == v and abs(v) < 1e4 for v in values)  # finite
    weights = list(built.trainer.student.parameters())
    assert all(p.dtype == torch.float32 for p in weights)  # autocast: fp32 master weights
