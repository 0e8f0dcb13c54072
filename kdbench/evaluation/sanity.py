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
This is McNemar's test on the paired per-sample outcomes (McNemar 1947) at about two standard errors;
the same tolerance decides every "attack A beats attack B" comparison below.

Severity. Every flag is a `Flag`: the message (a str, so flags stay plain strings in result.json)
plus ``check``, ``severity`` and the numbers behind it. ``serious`` means the headline robust
accuracy cannot be trusted (gradient masking, a randomised or non-deterministic model, an attack
bug); the leaderboard marks such a row unreliable, as RobustBench does. ``warning`` means a number
is probably overstated but the stronger attack that shows it is there to trust (e.g. PGD-20 above
AutoAttack by more than noise), or an observation that does not invalidate the run.

The masking and weak-attack checks (Carlini et al. 2019's checklist; Athalye et al. 2018):

* `check_deterministic`: two clean passes must give the same logits (else: a randomised model, whose
  evaluation needs EOT);
* `check_input_gradients`: the share of points whose input gradient of the cross-entropy is exactly
  zero, or non-finite (shattered or saturated gradients: quantised inputs, logits scaled by 1e4);
* `check_black_box`: a gradient-free attack (Square, Andriushchenko et al. 2020) must not beat PGD-20;
* `check_below_reference`: AutoAttack or CW more than noise below PGD-20 (say which one to trust);
* `check_unbounded`: at an eps that allows any image, PGD (step scaled to eps) must reach ~0 accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any, Literal, Self

import torch
from torch import Tensor, nn

from kdbench.attacks.base import ModelFn
from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import input_gradient, pgd
from kdbench.models.base import ModelOutput

__all__ = [
    "SERIOUS",
    "WARNING",
    "Flag",
    "as_flag",
    "check_autoattack_vs_pgd",
    "check_below_reference",
    "check_black_box",
    "check_class_coverage",
    "check_deterministic",
    "check_eps_monotone",
    "check_eps_zero",
    "check_gradient_masking",
    "check_input_gradients",
    "check_logits",
    "check_robust_le_clean",
    "check_steps_monotone",
    "check_unbounded",
    "flag_details",
    "paired_noise_tolerance",
    "unbounded_eps",
]

#: Slack of accuracy comparisons between attacks run with different randomness (1 point).
ATTACK_TOLERANCE = 0.01
#: How much weaker than FGSM a multi-step attack may be before it hints at gradient masking (5 points).
MASKING_TOLERANCE = 0.05
#: PGD step counts compared by `check_steps_monotone` (same eps, step size, start and seed).
STEPS_CHECK_STEPS = (10, 20, 50)
#: The L-inf step size of the evaluation's PGD (`kdbench.evaluation.suite.LINF_STEP`); L2 uses eps / 4.
_LINF_STEP = 2 / 255
#: Share of points with an all-zero (or non-finite) input gradient above which gradients are masked.
ZERO_GRADIENT_SHARE = 0.05
#: A gap beyond noise this large (5 points) between two attacks is serious, not a warning: honest
#: adversarially trained CIFAR models lose 1-4 points from PGD-20 to AutoAttack (RobustBench).
SERIOUS_GAP = 0.05
#: Robust accuracy allowed at an unbounded eps (every image reachable): 5 % of the sample, at least 1 image.
UNBOUNDED_TOLERANCE = 0.05

Severity = Literal["serious", "warning"]
SERIOUS: Severity = "serious"
WARNING: Severity = "warning"


class Flag(str):
    """A sanity flag: its message (the str itself), the ``check`` that raised it, a ``severity`` and ``values``.

    A str subclass, so code and files that treat flags as strings keep working; `flag_details` gives
    the structured form stored in result.json's ``flag_details``.
    """

    check: str
    severity: Severity
    values: dict[str, Any]

    def __new__(
        cls, message: str, *, check: str, severity: Severity = SERIOUS, values: Mapping[str, Any] | None = None
    ) -> Self:
        flag = super().__new__(cls, message)
        flag.check = check
        flag.severity = severity
        flag.values = dict(values or {})
        return flag

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "message": str(self), "values": self.values}


def as_flag(text: str, *, check: str = "other", severity: Severity = WARNING) -> Flag:
    """``text`` as a `Flag` (unchanged when it already is one)."""
    return text if isinstance(text, Flag) else Flag(text, check=check, severity=severity)


def flag_details(flags: Sequence[str]) -> list[dict[str, Any]]:
    """result.json's ``flag_details``: one ``{check, severity, message, values}`` per flag (plain strings: warnings)."""
    return [as_flag(f).to_dict() for f in flags]


def check_logits(logits: Tensor) -> list[Flag]:
    """Flag non-finite outputs, and outputs that look like probabilities rather than logits.

    ``logits: (B, C)``. Probabilities: every entry in [0, 1] and every row summing to 1 within 1e-3.
    """
    logits = logits.detach().float()
    flags: list[Flag] = []
    if not bool(torch.isfinite(logits).all()):
        flags.append(Flag("model returns non-finite logits (NaN or inf)", check="logits"))
    elif logits.numel() and bool(
        (logits.min() >= 0) & (logits.max() <= 1) & ((logits.sum(dim=1) - 1).abs() <= 1e-3).all()
    ):
        flags.append(
            Flag("model returns probabilities, not logits: gradient-based attacks are unreliable", check="logits")
        )
    return flags


def check_eps_zero(model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf", steps: int = 2) -> list[Flag]:
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
    flags: list[Flag] = []
    if not torch.equal(x_zero, x.to(x_zero.dtype)):
        flags.append(Flag("eps=0 sanity check failed: PGD with eps=0 moved the input (attack bug)", check="eps_zero"))
    changed = int((clean != attacked).sum())
    if changed:
        flags.append(
            Flag(
                f"eps=0 sanity check failed: PGD with eps=0 changed {changed}/{len(y)} predictions "
                "(model not deterministic in eval mode?)",
                check="eps_zero",
                values={"changed": changed, "n": len(y)},
            )
        )
    return flags


def check_robust_le_clean(clean_acc: float, robust: Mapping[str, float | None]) -> list[Flag]:
    """Flag any attack whose accuracy exceeds the clean accuracy (impossible by construction: a bug)."""
    return [
        Flag(f"{name} accuracy {acc:.4f} above clean accuracy {clean_acc:.4f}: evaluation bug", check="robust_le_clean")
        for name, acc in robust.items()
        if acc is not None and acc > clean_acc
    ]


def check_autoattack_vs_pgd(robust: Mapping[str, float | None], tolerance: float = ATTACK_TOLERANCE) -> list[Flag]:
    """Flag AutoAttack accuracy above PGD-20's (+ tolerance) on the same samples: AutoAttack should be stronger."""
    aa, pgd20 = robust.get("autoattack"), robust.get("pgd20")
    if aa is None or pgd20 is None or aa <= pgd20 + tolerance:
        return []
    return [
        Flag(
            f"autoattack weaker than pgd20: {aa:.4f} > {pgd20:.4f} (AutoAttack misconfigured or model randomised?)",
            check="autoattack_vs_pgd",
            values={"autoattack": aa, "pgd20": pgd20},
        )
    ]


def check_gradient_masking(robust: Mapping[str, float | None], tolerance: float = MASKING_TOLERANCE) -> list[Flag]:
    """Flag multi-step attacks (``pgd<k>``, ``cw``) weaker than one-step FGSM by more than ``tolerance``.

    Iterating the same gradient attack should never help the model; when it does, the gradients are
    probably masked or obfuscated (Athalye et al. 2018) and every gradient-based number is suspect.
    """
    fgsm = robust.get("fgsm")
    if fgsm is None:
        return []
    return [
        Flag(
            f"{name} weaker than fgsm: possible gradient masking ({acc:.4f} > {fgsm:.4f} + {tolerance})",
            check="weaker_than_fgsm",
            values={name: acc, "fgsm": fgsm},
        )
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


# ---------------------------------------------------------------------------------------------
# gradient masking and weak attacks (Carlini et al. 2019, section 5; Athalye et al. 2018)


def _logits_fn(model: nn.Module) -> ModelFn:
    def model_fn(images: Tensor) -> ModelOutput:
        logits = model(images)
        return ModelOutput(logits, logits)

    return model_fn


def _robust(model: nn.Module, x_adv: Tensor, y: Tensor, clean: Tensor) -> Tensor:
    with torch.no_grad():
        logits: Tensor = model(x_adv)
        return ((logits.argmax(dim=1) == y) & clean).cpu()


def check_deterministic(model: nn.Module, x: Tensor) -> list[Flag]:
    """Two clean passes on ``x: (B, C, H, W)`` must give the same logits (rtol 1e-4, atol 1e-5).

    A model that differs between passes in eval mode is randomised (noise, random transforms,
    stochastic activations): gradient attacks on one sample of its randomness overstate robustness,
    and its evaluation needs Expectation over Transformation (Athalye et al. 2018). Cost: 2 forward passes.
    """
    with torch.no_grad():
        first, second = model(x).float(), model(x).float()
    if torch.allclose(first, second, rtol=1e-4, atol=1e-5, equal_nan=True):
        return []
    changed = int((first.argmax(dim=1) != second.argmax(dim=1)).sum())
    delta = float((first - second).abs().max())
    return [
        Flag(
            f"model is randomised: two clean passes differ (max logit change {delta:.3g}, "
            f"{changed}/{len(x)} predictions changed); gradient attacks need EOT, robust accuracy is overstated",
            check="deterministic",
            values={"changed_predictions": changed, "n": len(x)},
        )
    ]


def check_input_gradients(
    model: nn.Module, x: Tensor, y: Tensor, *, threshold: float = ZERO_GRADIENT_SHARE
) -> list[Flag]:
    """Flag when more than ``threshold`` of the points have an input gradient of the cross-entropy that is
    exactly zero everywhere, and when any is non-finite.

    ``x: (B, C, H, W)`` float in [0, 1], ``y: (B,)``, on the model's device. An honest network's gradient
    is never exactly zero in float32; a quantised input without a straight-through gradient, or logits
    so large that the softmax saturates (scaled by 1e4), make it so, and every gradient attack then
    stands still (Athalye et al. 2018's "shattered" and "vanishing" gradients). Cost: 1 forward-backward pass.
    """
    grad = input_gradient(_logits_fn(model), x.float(), cross_entropy(y)).flatten(1)
    n = max(len(x), 1)
    zero = int((grad == 0).all(dim=1).sum())
    nonfinite = int((~torch.isfinite(grad)).any(dim=1).sum())
    flags = []
    if nonfinite:
        flags.append(
            Flag(
                f"input gradient non-finite on {nonfinite}/{len(x)} points: gradient attacks are unreliable",
                check="input_gradients",
                values={"nonfinite": nonfinite, "n": len(x)},
            )
        )
    if zero / n > threshold:
        flags.append(
            Flag(
                f"input gradient exactly zero on {zero}/{len(x)} points ({zero / n:.0%} > {threshold:.0%}): "
                "gradient masking (quantised input without a straight-through gradient, saturated softmax?); "
                "gradient attacks cannot move these points",
                check="input_gradients",
                values={"zero": zero, "n": len(x), "threshold": threshold},
            )
        )
    return flags


def check_below_reference(
    correct: Mapping[str, Tensor], reference: str = "pgd20", others: Sequence[str] = ("autoattack", "cw")
) -> list[Flag]:
    """Flag every attack in ``others`` whose robust accuracy is more than noise below ``reference``'s.

    ``correct``: attack name -> per-sample robust correctness ``(N,)`` on the same samples (as in
    `kdbench.evaluation.EvalReport.correct`). A gap beyond noise (`paired_noise_tolerance`) means the
    reference's budget is not enough for this model: its number overstates robustness and the lower
    one is the one to trust. Severity: `WARNING`, or `SERIOUS` when the gap also exceeds `SERIOUS_GAP`
    (more than honest models show: a sign of masked gradients that may fool the lower attack too).
    """
    if reference not in correct:
        return []
    flags = []
    for name in others:
        if name not in correct or name == reference:
            continue
        excess = _excess(correct[name], correct[reference], None)
        if excess is None:
            continue
        acc_other, acc_ref, gap, tol = excess
        severity = SERIOUS if gap > SERIOUS_GAP else WARNING
        flags.append(
            Flag(
                f"{name} {acc_other:.4f} is {gap:.4f} below {reference} {acc_ref:.4f} (> noise {tol:.4f}): "
                f"{reference} overstates robustness, trust {name}",
                check=f"{name}_below_{reference}",
                severity=severity,
                values={name: acc_other, reference: acc_ref, "gap": gap, "noise": tol},
            )
        )
    return flags


def check_black_box(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    reference: Tensor,
    *,
    reference_name: str = "pgd20",
    eps: float,
    norm: str = "linf",
    queries: int = 200,
    seed: int = 0,
) -> list[Flag]:
    """A gradient-free attack must not beat a gradient attack: Square (Andriushchenko et al., ECCV 2020).

    Runs pyautoattack's Square attack (margin loss, ``queries`` queries, the schedule rescaled to that
    budget) on ``x: (B, C, H, W)``, ``y: (B,)`` on the model's device and compares its per-sample
    robust correctness with ``reference: (B,)`` (the gradient attack's, same samples) by McNemar's
    test (`paired_noise_tolerance`). A black-box attack with a small budget that breaks more points
    than PGD means the gradients mislead PGD: gradient masking (Carlini et al. 2019). Serious.
    Cost: about ``queries`` forward passes of the B points.
    """
    try:
        from pyautoattack.square import SquareAttack
    except ImportError:
        return [Flag("black-box check skipped: pyautoattack is not installed", check="black_box", severity=WARNING)]
    device = x.device
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y

    def predict(images: Tensor) -> Tensor:
        logits: Tensor = model(images)
        return logits.float()

    attack = SquareAttack(
        predict, norm="Linf" if norm == "linf" else "L2", n_queries=queries, eps=eps, seed=seed, device=device
    )
    with _forked_rng(device), torch.no_grad():
        x_adv = attack.perturb(x.float(), y)
    square = _robust(model, x_adv, y, clean)
    excess = _excess(square, reference.bool().cpu(), None)
    if excess is None:
        return []
    acc_square, acc_ref, gap, tol = excess
    return [
        Flag(
            f"black-box Square ({queries} queries, n={len(x)}) {acc_square:.4f} beats {reference_name} "
            f"{acc_ref:.4f} by {gap:.4f} > noise {tol:.4f}: gradients mislead the attack (gradient masking)",
            check="black_box",
            values={"square": acc_square, reference_name: acc_ref, "gap": gap, "noise": tol, "queries": queries},
        )
    ]


def unbounded_eps(norm: str, x: Tensor) -> float:
    """A budget that allows every image: 1 for L-inf (images in [0, 1]); the cube's diagonal sqrt(d) for L2."""
    return 1.0 if norm == "linf" else math.sqrt(x[0].numel())


def check_unbounded(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    steps: int = 20,
    step_size: float | None = None,
    tolerance: float = UNBOUNDED_TOLERANCE,
) -> list[Flag]:
    """With a budget that allows any image, PGD must drive robust accuracy to about zero.

    PGD-``steps`` on the cross-entropy from x itself (no random start: a random image is misclassified
    anyway, which would hide an attack that cannot move), eps = `unbounded_eps`, step
    ``step_size`` (default ``max(eps/4, 2.5 * eps / steps)``, scaled to the eps). Flags when more than
    ``max(1, tolerance * B)`` of the ``B`` samples stay robust: the attack cannot reach the boundary
    even without a budget (Carlini et al. 2019: "iterative attacks should reach 100 % success with an
    unbounded distortion"). Serious. Cost: ``steps`` forward-backward passes of the B points.
    """
    eps = unbounded_eps(norm, x)
    alpha = step_size if step_size is not None else max(eps / 4, 2.5 * eps / steps)
    x = x.float()
    with torch.no_grad():
        clean = model(x).argmax(dim=1) == y
    x_adv = pgd(
        _logits_fn(model), x, cross_entropy(y), norm=norm, eps=eps, step_size=alpha, steps=steps, random_start="none"
    )
    robust = int(_robust(model, x_adv, y, clean).sum())
    allowed = max(1, int(tolerance * len(x)))
    if robust <= allowed:
        return []
    return [
        Flag(
            f"unbounded attack fails: {robust}/{len(x)} points stay robust to PGD-{steps} at eps {eps:g} (any image "
            f"allowed; at most {allowed} expected): gradient masking or a broken attack",
            check="unbounded",
            values={"robust": robust, "n": len(x), "eps": eps, "step_size": alpha},
        )
    ]


def check_class_coverage(per_class: Sequence[int]) -> list[Flag]:
    """Flag an evaluation set that misses classes: its accuracy is not the dataset's (serious)."""
    covered = sum(1 for count in per_class if count > 0)
    if not per_class or covered == len(per_class):
        return []
    return [
        Flag(
            f"evaluated on {covered} of {len(per_class)} classes (images per class: {list(per_class)}): "
            "the accuracy is not the dataset's; use the fixed selection (drop eval.examples) "
            "or a larger eval.n_examples",
            check="class_coverage",
            values={"classes_covered": covered, "num_classes": len(per_class)},
        )
    ]
