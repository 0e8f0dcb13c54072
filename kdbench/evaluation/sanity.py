"""Sanity checks of a robustness evaluation; each returns flag strings (empty when all is well).

They catch the usual ways a robust accuracy is wrong (Carlini et al., "On Evaluating Adversarial
Robustness", 2019; Croce & Hein 2020): an attack that does not move the prediction at eps = 0 the way
it should, a model that outputs probabilities (softmax saturation gives vanishing gradients), a
multi-step attack weaker than a single step (gradient masking), AutoAttack weaker than PGD, more
PGD steps or a larger eps helping the model by more than noise, and a robust accuracy above the clean
one (impossible by construction here, so it means a bug).

Noise. Two randomised attacks on the same samples disagree on some of them. When the later, stronger
attack (more steps, larger eps) leaves ``g`` samples robust that the earlier one broke and breaks ``l``
that it left robust, its accuracy is higher by ``(g - l) / n``. Were both attacks equally strong, every
one of the ``d = g + l`` disagreements would go either way with probability 1/2, so ``g - l`` would have
mean 0 and standard deviation ``sqrt(d)``. `paired_noise_tolerance` allows two of those standard
deviations, and never less than `ATTACK_TOLERANCE`: ``max(0.01, 2 * sqrt(d) / n)``. A stronger attack
should only ever shift the balance the other way, so a flag is rare unless something is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain

import torch
from torch import Tensor, nn

from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import pgd
from kdbench.models.base import ModelOutput

__all__ = [
    "check_autoattack_vs_pgd",
    "check_eps_monotone",
    "check_eps_zero",
    "check_gradient_masking",
    "check_logits",
    "check_robust_le_clean",
    "check_steps_monotone",
    "paired_noise_tolerance",
]

#: Slack of accuracy comparisons between attacks run with different randomness (1 point).
ATTACK_TOLERANCE = 0.01
#: How much weaker than FGSM a multi-step attack may be before it hints at gradient masking (5 points).
MASKING_TOLERANCE = 0.05
#: PGD step counts compared by `check_steps_monotone` (same eps, step size, start and seed).
STEPS_CHECK_STEPS = (10, 20, 50)
#: The L-inf step size of the evaluation's PGD (`kdbench.evaluation.suite.LINF_STEP`); L2 uses eps / 4.
_LINF_STEP = 2 / 255


def check_logits(logits: Tensor) -> list[str]:
    """Flag non-finite outputs, and outputs that look like probabilities rather than logits.

    ``logits: (B, C)``. Probabilities: every entry in [0, 1] and every row summing to 1 within 1e-3.
    """
    logits = logits.detach().float()
    flags = []
    if not bool(torch.isfinite(logits).all()):
        flags.append("model returns non-finite logits (NaN or inf)")
    elif logits.numel() and bool(
        (logits.min() >= 0) & (logits.max() <= 1) & ((logits.sum(dim=1) - 1).abs() <= 1e-3).all()
    ):
        flags.append("model returns probabilities, not logits: gradient-based attacks are unreliable")
    return flags


def check_eps_zero(model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf", steps: int = 2) -> list[str]:
    """PGD with eps = 0 (uniform start, CE) must leave every prediction, hence the accuracy, unchanged.

    ``model``: images -> logits, ``x: (B, C, H, W)`` on the model's device, ``y: (B,)``. A flag here
    means the attack leaves the ball or the model is not deterministic in eval mode.
    """

    def model_fn(images: Tensor) -> ModelOutput:
        logits = model(images)
        return ModelOutput(logits, logits)

    x_zero = pgd(model_fn, x, cross_entropy(y), norm=norm, eps=0.0, step_size=2 / 255, steps=steps)
    with torch.no_grad():
        clean = model(x).argmax(dim=1)
        attacked = model(x_zero).argmax(dim=1)
    flags = []
    if not torch.equal(x_zero, x.to(x_zero.dtype)):
        flags.append("eps=0 sanity check failed: PGD with eps=0 moved the input (attack bug)")
    changed = int((clean != attacked).sum())
    if changed:
        flags.append(
            f"eps=0 sanity check failed: PGD with eps=0 changed {changed}/{len(y)} predictions "
            "(model not deterministic in eval mode?)"
        )
    return flags


def check_robust_le_clean(clean_acc: float, robust: Mapping[str, float | None]) -> list[str]:
    """Flag any attack whose accuracy exceeds the clean accuracy (impossible by construction: a bug)."""
    return [
        f"{name} accuracy {acc:.4f} above clean accuracy {clean_acc:.4f}: evaluation bug"
        for name, acc in robust.items()
        if acc is not None and acc > clean_acc
    ]


def check_autoattack_vs_pgd(robust: Mapping[str, float | None], tolerance: float = ATTACK_TOLERANCE) -> list[str]:
    """Flag AutoAttack accuracy above PGD-20's (+ tolerance) on the same samples: AutoAttack should be stronger."""
    aa, pgd20 = robust.get("autoattack"), robust.get("pgd20")
    if aa is None or pgd20 is None or aa <= pgd20 + tolerance:
        return []
    return [f"autoattack weaker than pgd20: {aa:.4f} > {pgd20:.4f} (AutoAttack misconfigured or model randomised?)"]


def check_gradient_masking(robust: Mapping[str, float | None], tolerance: float = MASKING_TOLERANCE) -> list[str]:
    """Flag multi-step attacks (``pgd<k>``, ``cw``) weaker than one-step FGSM by more than ``tolerance``.

    Iterating the same gradient attack should never help the model; when it does, the gradients are
    probably masked or obfuscated (Athalye et al. 2018) and every gradient-based number is suspect.
    """
    fgsm = robust.get("fgsm")
    if fgsm is None:
        return []
    return [
        f"{name} weaker than fgsm: possible gradient masking ({acc:.4f} > {fgsm:.4f} + {tolerance})"
        for name, acc in robust.items()
        if acc is not None and (name.startswith("pgd") or name == "cw") and acc > fgsm + tolerance
    ]


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
    torch.random.default_generator.manual_seed(seed)
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
) -> list[str]:
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

    flags = []
    for i, fewer in enumerate(counts):
        for more in counts[i + 1 :]:
            excess = _excess(robust[fewer], robust[more], tolerance)
            if excess is not None:
                acc_fewer, acc_more, gain, tol = excess
                flags.append(
                    f"pgd{more} robust accuracy {acc_more:.4f} exceeds pgd{fewer}'s {acc_fewer:.4f} by "
                    f"{gain:.4f} > noise {tol:.4f}: more steps helped the model (gradient masking or an "
                    "attack that does not converge?)"
                )
    return flags


def check_eps_monotone(correct_by_eps: Mapping[float, Tensor], tolerance: float | None = None) -> list[str]:
    """A larger eps must never raise robust accuracy by more than noise (an eps sweep's sanity check).

    ``correct_by_eps``: eps -> per-sample robust correctness ``(N,)`` of the same attack on the same
    samples. Every pair eps < eps' is compared as in `check_steps_monotone`.
    """
    ordered = sorted(correct_by_eps.items())
    flags = []
    for i, (small, weaker) in enumerate(ordered):
        for large, stronger in ordered[i + 1 :]:
            excess = _excess(weaker, stronger, tolerance)
            if excess is not None:
                acc_small, acc_large, gain, tol = excess
                flags.append(
                    f"eps sweep: robust accuracy at eps {large:g} ({acc_large:.4f}) exceeds that at eps {small:g} "
                    f"({acc_small:.4f}) by {gain:.4f} > noise {tol:.4f} (gradient masking or attack bug?)"
                )
    return flags
