"""Projected gradient descent (here: ascent) on a per-sample objective, L-inf or L2.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018::

    x'_0     = random_start(x)                                   (projected into B(x))
    x'_{t+1} = clip_[0,1](proj_{B(x)}(x'_t + alpha * step(grad_x' L(f(x'_t)))))   t = 0 .. k-1

with ``step = sign`` for L-inf and ``g / ||g||_2`` for L2 (see `kdbench.attacks.threat`). ``steps = 0``
returns the projected start point (x itself when ``random_start = "none"``); ``eps = 0`` returns x
exactly.

The gradient is taken with ``torch.autograd.grad`` with respect to the input only, so parameter
``.grad`` fields are never touched, whether or not parameters require grad. The loop has no host
synchronisation (no ``.item()``, no branching on tensor values), and the iterate, its step and its
projection are float32 even when the model runs under bf16 autocast.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from kdbench.attacks import threat
from kdbench.attacks.base import Attack, ModelFn, Objective
from kdbench.attacks.threat import ThreatModelConfig, ascent_direction, check_eps, linf_bounds, project

__all__ = ["PGD", "input_gradient", "pgd"]


def input_gradient(model: ModelFn, x_adv: Tensor, objective: Objective) -> Tensor:
    """``d/dx' sum_i objective(model(x'))_i``, float32, without touching any parameter's ``.grad``.

    ``x_adv`` is a detached float32 tensor; grad mode is switched on locally, so this also works when
    the caller is under ``torch.no_grad()``.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = objective(model(x_adv)).float().sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad.float()


def pgd(
    model: ModelFn,
    x: Tensor,
    objective: Objective,
    *,
    norm: str = "linf",
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: str = "uniform",
) -> Tensor:
    """Run PGD-``steps`` from ``random_start`` and return x' (detached, ``x``'s shape and dtype).

    ``x: (B, C, H, W)`` in [0, 1]; ``objective(model(x')) -> (B,)`` is maximised. All arguments as in
    `ThreatModelConfig`. Pass x as float32: x' is computed in float32 and cast back to ``x.dtype``.
    """
    check_eps(norm, eps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x0 = x.detach().float()
    bounds = linf_bounds(x0, eps) if norm == "linf" else None
    x_adv = threat.random_start(x0, norm=norm, eps=eps, mode=random_start, bounds=bounds)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, objective)
        x_adv = project(x_adv + step_size * ascent_direction(grad, norm), x0, norm=norm, eps=eps, bounds=bounds)
    return x_adv.detach().to(x.dtype)


class PGD(Attack[ThreatModelConfig]):
    """PGD-k within an L-inf or L2 ball (Madry et al. 2018); options in `ThreatModelConfig`.

    Defaults: eps 8/255, alpha 2/255, 10 steps, uniform start (the PGD-10 of adversarial training).
    """

    Config: ClassVar[type[ThreatModelConfig]] = ThreatModelConfig

    def __init__(self, config: ThreatModelConfig | None = None):
        super().__init__(config if config is not None else self.Config())

    def perturb(self, model: ModelFn, x: Tensor, objective: Objective) -> Tensor:
        """x' maximising ``objective`` inside the threat model; see `pgd`."""
        c = self.config
        return pgd(
            model,
            x,
            objective,
            norm=c.norm,
            eps=c.eps,
            step_size=c.step_size,
            steps=c.steps,
            random_start=c.random_start,
        )
