"""Checks on the numbers and outputs of one evaluation: logits that are not probabilities, eps = 0 equal
to clean, robust <= clean, AutoAttack not above PGD, multi-step attacks not weaker than FGSM."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from kdbench.attacks.objectives import cross_entropy
from kdbench.attacks.pgd import pgd
from kdbench.evaluation.sanity.flags import (
    ATTACK_TOLERANCE,
    MASKING_TOLERANCE,
    Flag,
)
from kdbench.models.base import ModelOutput


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
