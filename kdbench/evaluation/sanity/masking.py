"""Gradient masking and weak attacks (Carlini et al. 2019, section 5; Athalye et al. 2018): randomness,
zero input gradients, a reference attack or a black-box one beating PGD, robustness at an unbounded eps,
and the classes an evaluation covers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from kdbench.attacks.base import ModelFn
from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import input_gradient, pgd
from kdbench.evaluation.sanity.flags import (
    SERIOUS,
    SERIOUS_GAP,
    UNBOUNDED_TOLERANCE,
    WARNING,
    ZERO_GRADIENT_SHARE,
    Flag,
)
from kdbench.evaluation.sanity.monotone import _excess, _forked_rng
from kdbench.models.base import ModelOutput

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
