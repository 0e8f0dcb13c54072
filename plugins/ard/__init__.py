"""``ard``: Adversarially Robust Distillation (Goldblum, Fowl, Feizi & Goldstein, "Adversarially
Robust Distillation", AAAI 2020, arXiv:1905.09747; code github.com/goldblum/AdversariallyRobustDistillation).

    x'   = PGD-k maximising CE(S(x'), y)                       (student BatchNorm in train mode)
    loss = a * T^2 * KL(softmax(z_T(x) / T) || softmax(z_S(x') / T)) + (1 - a) * CE(S(x), y)

The student on the adversarial input is pulled towards the teacher's temperature-softened prediction
on the *clean* input. Defaults follow the official ``main.py``: T = 30, a = 1 (so the CE term is off,
and kdbench then skips the clean student forward altogether), PGD-10 with step 2/255 from a uniform
start, the attack run with the student in train mode (``net.train()`` wraps the attack). The official
loop also runs ``basic_net(inputs)`` when a = 1; that unused pass only feeds one clean batch per step
into the student's BatchNorm running statistics, which this plugin therefore does not do.

KL reduction. The official code uses ``nn.KLDivLoss()`` with its default ``reduction="mean"``: the
mean over all batch x class elements, i.e. ``1/C`` times the per-sample KL summed over classes. That
is the default here (``reduction = "mean"``), for fidelity: with T = 30 and a = 1 it sets the
effective learning rate. ``reduction = "batchmean"`` gives the textbook KL (sum over classes, mean
over the batch), C times larger.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdbench import Method, Objective, StepContext, StrictModel
from kdbench.attacks.objectives import cross_entropy
from kdbench.losses import softened_kl

__all__ = ["ARD", "ARDConfig", "ard_divergence"]

Reduction = Literal["mean", "batchmean"]


class ARDConfig(StrictModel):
    temperature: float = Field(30.0, gt=0, description="softmax temperature T (30 in the official code)")
    alpha: float = Field(
        1.0, ge=0, le=1, description="weight a of the adversarial distillation term; CE on clean x gets 1 - a"
    )
    reduction: Reduction = Field(
        "mean",
        description='KL reduction: "mean" over batch x classes (official nn.KLDivLoss()), '
        '"batchmean" = sum over classes, mean over batch',
    )


def ard_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float, reduction: Reduction) -> Tensor:
    """``T^2 * KL(softmax(z_T / T) || softmax(z_S / T))`` reduced over the batch; logits ``(B, C)`` -> scalar.

    ``reduction = "mean"`` averages the elementwise terms ``p_T,c (log p_T,c - log p_S,c)`` over all
    B x C entries (``nn.KLDivLoss()``'s default, as in the official code); ``"batchmean"`` sums over
    classes and averages over the batch.
    """
    return softened_kl(student_logits, teacher_logits, temperature, reduction)


class ARD(Method):
    """ARD: the student on PGD examples (CE attack) matches the teacher's softened clean prediction."""

    paper = "https://arxiv.org/abs/1905.09747"

    Config = ARDConfig
    config: ARDConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = True
    # The official attack runs inside net.train(): BatchNorm uses (and updates) batch statistics.
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "train"

    def attack_objective(self, ctx: StepContext) -> Objective:
        return cross_entropy(ctx.y)

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c = self.config
        terms = {
            "kd_adv": c.alpha
            * ard_divergence(ctx.student_adv.logits, ctx.teacher_clean.logits, c.temperature, c.reduction)
        }
        if c.alpha < 1:  # a = 1 (the default) needs no clean student forward at all
            terms["ce"] = (1 - c.alpha) * F.cross_entropy(ctx.student_clean.logits.float(), ctx.y)
        return terms
