"""A stronger attack never helps the model by more than noise: more PGD steps, larger eps (paired tests on
the same examples, with the noise of their disagreements)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain

import torch
from torch import Tensor, nn

from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import pgd
from kdbench.evaluation.sanity.flags import (
    _LINF_STEP,
    ATTACK_TOLERANCE,
    STEPS_CHECK_STEPS,
    Flag,
)
from kdbench.models.base import ModelOutput

# ---------------------------------------------------------------------------------------------
# "a stronger attack never helps the model by more than noise"


def paired_noise_tolerance(n: int, disagreements: int) -> float:
    """``max(ATTACK_TOLERANCE, 2 * sqrt(disagreements) / n)``: two standard deviations of the accuracy
    difference of two equally strong attacks that disagree on ``disagreements`` of the same ``n`` samples
    (see the module docstring)."""
    return max(ATTACK_TOLERANCE, 2 * math.sqrt(disagreements) / max(n, 1))


def _excess(weaker: Tensor, stronger: Tensor, tolerance: float | None) -> tuple[float, float, float, float] | None:
    """``(acc_weaker, acc_stronger, gain, tolerance)`` when the stronger attack's per-sample robust
    correctness ``(N,)`` has an accuracy above the weaker one's by more than the tolerance, else None."""
    weaker, stronger = weaker.bool().cpu(), stronger.bool().cpu()
    n = weaker.numel()
    gained = int((stronger & ~weaker).sum())
    lost = int((weaker & ~stronger).sum())
    tol = tolerance if tolerance is not None else paired_noise_tolerance(n, gained + lost)
    gain = (gained - lost) / max(n, 1)
    if gain <= tol:
        return None
    return float(weaker.float().mean()), float(stronger.float().mean()), gain, tol


def _device_of(model: nn.Module) -> torch.device:
    return next(chain(model.parameters(), model.buffers()), torch.empty(0)).device


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """The CPU generator and that of ``device`` (when CUDA, made current) restored on exit."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            yield
        return
    with torch.random.fork_rng(devices=[]):
        yield


def _reseed(device: torch.device, seed: int) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def check_steps_monotone(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: Sequence[int] = STEPS_CHECK_STEPS,
    step_size: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    tolerance: float | None = None,
) -> list[Flag]:
    """More PGD steps must never raise robust accuracy by more than noise.

    Runs PGD-k (cross-entropy, uniform start, ``step_size`` default 2/255 for L-inf and eps/4 for L2, as
    in the evaluation suite) for every k in ``steps`` on the same samples, each run starting from
    ``seed``, and flags every pair k < k' where PGD-k' leaves more samples robust than PGD-k by more than
    ``tolerance`` (default: `paired_noise_tolerance` of the pair's disagreements). Robust means correct
    on x and on x'. That more iterations of the same attack help the model is the signature of masked or
    obfuscated gradients (Athalye et al. 2018), or of an attack that does not converge.

    ``model``: images in [0, 1] -> logits, in eval mode; ``x: (N, C, H, W)`` float in [0, 1] (or uint8)
    and ``y: (N,)`` on any device (batches move to the model's). The caller's RNG state is left as it was.
    Cost: the sum of ``steps`` forward-backward passes over the N samples (80 with the default 10, 20, 50).
    """
    counts = sorted({int(k) for k in steps})
    if len(counts) < 2 or counts[0] < 1:
        raise ValueError(f"steps must hold at least two distinct positive step counts, got {list(steps)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    alpha = step_size if step_size is not None else (_LINF_STEP if norm == "linf" else eps / 4)
    device = _device_of(model)

    def model_fn(images: Tensor) -> ModelOutput:
        logits = model(images)
        return ModelOutput(logits, logits)

    if x.dtype == torch.uint8:
        x = x.float().div(255)
    n = x.shape[0]
    robust: dict[int, Tensor] = {}
    with _forked_rng(device):
        clean = torch.empty(n, dtype=torch.bool)
        for a in range(0, n, batch_size):
            xb, yb = x[a : a + batch_size].to(device).float(), y[a : a + batch_size].to(device)
            with torch.no_grad():
                clean[a : a + batch_size] = (model(xb).argmax(dim=1) == yb).cpu()
        for k in counts:
            _reseed(device, seed)
            correct = torch.empty(n, dtype=torch.bool)
            for a in range(0, n, batch_size):
                xb, yb = x[a : a + batch_size].to(device).float(), y[a : a + batch_size].to(device)
                x_adv = pgd(model_fn, xb, cross_entropy(yb), norm=norm, eps=eps, step_size=alpha, steps=k)
                with torch.no_grad():
                    correct[a : a + batch_size] = (model(x_adv).argmax(dim=1) == yb).cpu()
            robust[k] = correct & clean

    flags: list[Flag] = []
    for i, fewer in enumerate(counts):
        for more in counts[i + 1 :]:
            excess = _excess(robust[fewer], robust[more], tolerance)
            if excess is not None:
                acc_fewer, acc_more, gain, tol = excess
                flags.append(
                    Flag(
                        f"pgd{more} robust accuracy {acc_more:.4f} exceeds pgd{fewer}'s {acc_fewer:.4f} by "
                        f"{gain:.4f} > noise {tol:.4f}: more steps helped the model (gradient masking or an "
                        "attack that does not converge?)",
                        check="steps_monotone",
                        values={f"pgd{fewer}": acc_fewer, f"pgd{more}": acc_more, "noise": tol},
                    )
                )
    return flags


def check_eps_monotone(correct_by_eps: Mapping[float, Tensor], tolerance: float | None = None) -> list[Flag]:
    """A larger eps must never raise robust accuracy by more than noise (an eps sweep's sanity check).

    ``correct_by_eps``: eps -> per-sample robust correctness ``(N,)`` of the same attack on the same
    samples. Every pair eps < eps' is compared as in `check_steps_monotone`.
    """
    ordered = sorted(correct_by_eps.items())
    flags: list[Flag] = []
    for i, (small, weaker) in enumerate(ordered):
        for large, stronger in ordered[i + 1 :]:
            excess = _excess(weaker, stronger, tolerance)
            if excess is not None:
                acc_small, acc_large, gain, tol = excess
                flags.append(
                    Flag(
                        f"eps sweep: robust accuracy at eps {large:g} ({acc_large:.4f}) exceeds that at eps "
                        f"{small:g} ({acc_small:.4f}) by {gain:.4f} > noise {tol:.4f} "
                        "(gradient masking or attack bug?)",
                        check="eps_monotone",
                        values={"eps_small": small, "eps_large": large, "acc_small": acc_small, "acc_large": acc_large},
                    )
                )
    return flags
