"""The threat model shared by the gradient attacks: its config and the fp32 perturbation math.

An attack searches the set ``B(x) = {x' : ||x' - x|| <= eps} ∩ [0, 1]^d`` for the point that
maximises an objective (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018). The helpers here are the pieces of that search:

* `project` maps any x' back into ``B(x)``: L-inf clamps each pixel to ``[x - eps, x + eps] ∩ [0, 1]``;
  L2 rescales the perturbation ``d = x' - x`` to ``d * min(1, eps / ||d||_2)`` per sample, then clamps
  to [0, 1] (clamping moves every pixel towards x, so it never leaves the ball).
* `ascent_direction` is the steepest-ascent direction of the norm's unit ball: ``sign(g)`` for L-inf
  (Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015) and
  ``g / max(||g||_2, 1e-12)`` per sample for L2.
* `random_start` draws the starting point: ``"uniform"`` (Madry et al.: ``x + U(-eps, eps)`` for
  L-inf, a point drawn uniformly from the L2 ball for L2), ``"normal"`` (``x + 0.001 * N(0, 1)``, the
  start of the TRADES and RSLAD code) or ``"none"`` (x itself); always projected into ``B(x)``.

Everything is computed in float32 whatever the dtype the model runs in: bf16 has 8 significant bits,
so near 1 its spacing is 1/128, coarser than a 2/255 step. Random numbers come from torch's global
generator of x's device (seed it, or fork it, for reproducibility).

Exactness of the L-inf ball. `linf_bounds` rounds eps *down* to float32 and nudges each bound by one
ulp where float32 rounding of ``x ± eps`` overshoots, so the float32 check
``(x_adv - x).abs().max() <= eps`` holds exactly, for every x in [0, 1] and every eps (and eps = 0
returns x bit for bit). The L2 ball holds to float32 rounding: ``||x_adv - x||_2 <= eps * (1 + 1e-6)``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from kdbench.config import Number, StrictModel

__all__ = [
    "Norm",
    "RandomStart",
    "ThreatModelConfig",
    "ascent_direction",
    "check_eps",
    "clamp01",
    "float32_eps",
    "linf_bounds",
    "per_sample_norm",
    "project",
    "random_start",
]

Norm = Literal["linf", "l2"]
RandomStart = Literal["uniform", "normal", "none"]

#: Standard deviation of the "normal" start (TRADES, Zhang et al. 2019; RSLAD, Zi et al. 2021).
NORMAL_START_STD = 0.001
#: Floor of ||g||_2 in the L2 step, so a zero gradient gives a zero step rather than NaN.
_NORM_FLOOR = 1e-12


def check_eps(norm: str, eps: float) -> None:
    """Raise ValueError unless ``eps`` is a valid budget: ``0 <= eps <= 1`` for L-inf, ``eps >= 0`` for L2."""
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise ValueError(f"an L-inf eps above 1 allows any image in [0, 1]; got {eps} (did you mean {eps}/255?)")


class ThreatModelConfig(StrictModel):
    """Norm, budget and schedule of a projected-gradient attack.

    Defaults: the CIFAR L-inf budget 8/255 of RobustBench, 2/255 steps, 10 steps from a uniform start
    (the PGD-10 of adversarial training, Madry et al. 2018). ``eps`` and ``step_size`` accept
    fractions such as ``"8/255"``.
    """

    norm: Norm = "linf"
    eps: Number = Field(8 / 255, ge=0)
    step_size: Number = Field(2 / 255, ge=0)
    steps: int = Field(10, ge=0)
    random_start: RandomStart = "uniform"

    @model_validator(mode="after")
    def _eps_fits_norm(self) -> ThreatModelConfig:
        check_eps(self.norm, self.eps)
        return self


# ---------------------------------------------------------------------------------------------
# building blocks


def clamp01(x: Tensor) -> Tensor:
    """Clamp to the image range [0, 1]."""
    return x.clamp(0.0, 1.0)


def float32_eps(eps: float) -> float:
    """The largest float32 value <= ``eps`` (as a Python float), so an fp32 ball is never larger than eps."""
    # numpy scalars, not tensors: pure host arithmetic, so the attack reads no tensor value back
    # (kdbench.bench.syncs.HostReads checks the step for such reads on every device).
    e32 = np.float32(eps)
    if float(e32) > eps:
        e32 = np.nextafter(e32, np.float32(0.0))
    return float(e32)


def linf_bounds(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-pixel bounds ``(lo, hi)`` of ``{x' : |x' - x| <= eps} ∩ [0, 1]`` in float32.

    ``x: (B, ...)`` float in [0, 1]. Any ``x'`` clamped to ``[lo, hi]`` satisfies, in float32 arithmetic,
    ``|x' - x| <= eps`` exactly: eps is rounded down to float32, and where ``fl(x + eps) - x`` still
    rounds above eps, the bound moves one ulp towards x (then it is below ``x + eps`` in exact
    arithmetic, and float32 rounding is monotonic).
    """
    x = x.detach().float()
    e = float32_eps(eps)
    hi = x + e
    lo = x - e
    hi = torch.where(hi - x > e, torch.nextafter(hi, x), hi)
    lo = torch.where(x - lo > e, torch.nextafter(lo, x), lo)
    # [0, 1] clamping moves each bound towards x, which x in [0, 1] keeps inside the ball.
    return clamp01(lo), clamp01(hi)


def per_sample_norm(v: Tensor, norm: str) -> Tensor:
    """``||v_i||`` per sample over all non-batch dimensions, shaped ``(B, 1, ..., 1)`` to broadcast."""
    flat = v.flatten(1)
    values = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)
    return values.view(-1, *([1] * (v.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, *, norm: str, eps: float, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Project ``x_adv`` onto ``B(x) = {x' : ||x' - x|| <= eps} ∩ [0, 1]^d`` in float32.

    L-inf: ``clamp(x_adv, lo, hi)`` with `linf_bounds` (pass ``bounds`` to reuse them across steps).
    L2: ``x + d * min(1, eps / max(||d||_2, 1e-12))`` with ``d = x_adv - x``, then clamped to [0, 1].
    Returns a float32 tensor; eps = 0 returns x exactly.
    """
    x_adv = x_adv.float()
    if norm == "linf":
        lo, hi = bounds if bounds is not None else linf_bounds(x, eps)
        return torch.clamp(x_adv, lo, hi)
    if norm == "l2":
        x = x.float()
        delta = x_adv - x
        scale = (eps / per_sample_norm(delta, "l2").clamp_min(_NORM_FLOOR)).clamp(max=1.0)
        return clamp01(x + delta * scale)
    raise ValueError(f"unknown norm {norm!r} (choices: linf, l2)")


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """The steepest-ascent unit step for ``grad``: ``sign(g)`` (L-inf) or ``g / max(||g||_2, 1e-12)`` (L2).

    Computed in float32 (the gradient of a bf16 model is cast up first).
    """
    grad = grad.float()
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / per_sample_norm(grad, "l2").clamp_min(_NORM_FLOOR)
    raise ValueError(f"unknown norm {norm!r} (choices: linf, l2)")


def random_start(x: Tensor, *, norm: str, eps: float, mode: str, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The projected starting point of the search, float32.

    ``"uniform"``: L-inf ``x + U(-eps, eps)`` per pixel; L2 ``x + eps * u^(1/d) * z / ||z||_2`` with
    ``z ~ N(0, I)``, ``u ~ U(0, 1)`` and d the number of pixels (uniform in the ball).
    ``"normal"``: ``x + 0.001 * N(0, 1)``. ``"none"``: x. The result is projected onto ``B(x)``.
    """
    x = x.detach().float()
    if mode == "none":
        return x.clone()
    if mode == "normal":
        start = x + NORMAL_START_STD * torch.randn_like(x)
    elif mode == "uniform":
        if norm == "linf":
            start = x + torch.empty_like(x).uniform_(-eps, eps)
        else:
            direction = torch.randn_like(x)
            direction = direction / per_sample_norm(direction, "l2").clamp_min(_NORM_FLOOR)
            dims = math.prod(x.shape[1:])
            radius = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device).pow(1.0 / max(dims, 1))
            start = x + eps * radius * direction
    else:
        raise ValueError(f"unknown random start {mode!r} (choices: uniform, normal, none)")
    return project(start, x, norm=norm, eps=eps, bounds=bounds)
