"""How much an adversarial perturbation moves the student's penultimate features.

For the n inputs x and their PGD-20 adversarial versions x' (against the student itself, at the
run's evaluation threat model: eps, norm, step 2/255 for L-inf or eps/4 for L2, uniform random start,
cross-entropy objective, as `kdbench.evaluation` runs PGD-20; Madry et al., ICLR 2018):

    feature_change = (1/n) sum_i ||f(x'_i) - f(x_i)||_2 / ||f(x_i)||_2

where f is the student's penultimate pooled feature (`Network.features`). A robust representation
moves little (adversarial training lowers it; it is the "feature stability" such analyses of robust
distillation report); 0 means the attack did not move the features at all. A sample whose clean
feature is the zero vector is measured against a norm floor of 1e-12 instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import pgd
from kdbench.evaluation.attack_setup import LINF_STEP
from kdbench.models.base import Network

__all__ = ["PGD_STEPS", "adversarial_inputs", "relative_feature_change"]

#: The attack of the analysis: PGD-20, the evaluation's standard PGD.
PGD_STEPS = 20
_NORM_FLOOR = 1e-12


def relative_feature_change(clean: Tensor, adversarial: Tensor) -> float:
    """``mean_i ||a_i - c_i|| / ||c_i||`` for features ``clean, adversarial: (n, d)``."""
    if clean.shape != adversarial.shape or clean.ndim != 2:
        raise ValueError(
            f"features must be two (n, d) matrices, got {tuple(clean.shape)} and {tuple(adversarial.shape)}"
        )
    c = clean.detach().to(torch.float64)
    a = adversarial.detach().to(torch.float64)
    change = (a - c).norm(dim=1) / c.norm(dim=1).clamp_min(_NORM_FLOOR)
    return float(change.mean())


def adversarial_inputs(
    net: Network,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = PGD_STEPS,
    batch_size: int = 256,
    device: torch.device | None = None,
    seed: int = 0,
) -> Tensor:
    """PGD-``steps`` x' against ``net`` for ``images: (N, C, H, W)`` float in [0, 1] and ``labels: (N,)``.

    The network is used as it is (put it in eval mode first); its parameters' ``.grad`` are never
    touched. Returns x' on the CPU, float32. The random starts come from ``manual_seed(seed)`` inside
    ``torch.random.fork_rng``, so the caller's RNG state is unchanged.
    """
    device = device or images.device
    step = LINF_STEP if norm == "linf" else eps / 4
    out = []
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device, torch.float32)
            y = labels[start : start + batch_size].to(device)
            x_adv = pgd(net.forward_all, x, cross_entropy(y), norm=norm, eps=eps, step_size=step, steps=steps)
            out.append(x_adv.cpu())
    return torch.cat(out)
