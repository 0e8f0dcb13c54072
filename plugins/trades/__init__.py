"""``trades``: TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and
Accuracy", ICML 2019, arXiv:1901.08573; code yaodongyu/TRADES).

    x' = PGD-k from x + 0.001 * N(0, 1) maximising KL(p_S(x) || p_S(x'))
    loss = CE(S(x), y) + beta * KL(p_S(x) || p_S(x')),   beta = 6

KL summed over classes and averaged over the batch (the official ``KLDivLoss(size_average=False)``
divided by the batch size). As in the official code the attack runs with the student in eval mode
and its clean prediction p_S(x) fixed; in the loss both p_S(x) and p_S(x') carry gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdbench import Method, ModelOutput, Objective, StepContext, StrictModel
from kdbench.losses import softened_kl

__all__ = ["TRADES", "TRADESConfig", "trades_kl"]


class TRADESConfig(StrictModel):
    beta: float = Field(6.0, ge=0, description="weight of the robustness (KL) term; 6 in the paper's CIFAR-10 runs")


def trades_kl(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """Per-sample ``KL(p(x) || p(x')) = sum_c p_c(x) (log p_c(x) - log p_c(x'))``; logits ``(B, C)`` -> ``(B,)``."""
    return softened_kl(adv_logits, clean_logits, 1.0, "none")


class TRADES(Method):
    """TRADES: clean cross-entropy plus beta times the clean-to-adversarial KL of the student."""

    paper = "https://arxiv.org/abs/1901.08573"

    Config = TRADESConfig
    config: TRADESConfig
    needs_teacher: ClassVar[bool] = False
    uses_teacher_logits: ClassVar[bool] = False
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "eval"
    attack_defaults: ClassVar[Mapping[str, Any]] = {"random_start": "normal"}

    def attack_objective(self, ctx: StepContext) -> Objective:
        with torch.no_grad(), ctx.autocast():
            clean = ctx.student.forward_all(ctx.x).logits.float()

        def objective(out: ModelOutput) -> Tensor:
            return trades_kl(clean, out.logits)

        return objective

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        clean = ctx.student_clean.logits
        adv = ctx.student_adv.logits
        return {
            "ce": F.cross_entropy(clean.float(), ctx.y),
            "kl": self.config.beta * trades_kl(clean, adv).mean(),
        }
