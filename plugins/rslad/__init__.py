"""``rslad``: Robust Soft Label Adversarial Distillation (Zi, Zhao, Ma & Jiang, "Revisiting Adversarial
Robustness Distillation: Robust Soft Labels Make Student Better", ICCV 2021, arXiv:2108.07969;
code github.com/zibojia/RSLAD).

    x'   = PGD-k from x + 0.001 * N(0, 1) maximising sum_c KL(p_T(x) || p_S(x'))   (student in eval mode)
    loss = scale * (w_adv * KL(p_T(x) || p_S(x')) + w_clean * KL(p_T(x) || p_S(x))),  w = 5/6, 1/6

Temperature 1 and no cross-entropy: the teacher's clean prediction p_T(x) (the "robust soft label")
replaces the hard label in every term, including the attack's. The teacher's clean logits are read
from the step context, so they are computed once per batch and shared by the attack and the loss.

Official KL. ``mobilenet_v2_rslad_cifar10.py`` computes, with ``a = log_softmax(z_S)`` and
``b = softmax(z_T)``, the elementwise ``-b * a + b * log(b + 1e-5)`` and averages it over all
batch x class elements (``torch.mean``): 1/C times the per-sample KL, with a 1e-5 inside the log.
That is the default here (``reduction = "mean"``). The 1e-5 changes only the constant
``b * log(b + 1e-5)``, which does not depend on the student, so gradients equal the exact KL's.
``reduction = "batchmean"`` sums the same elementwise terms over classes and averages over the batch.
The official CIFAR-100 scripts multiply both terms by 10 (``scale = 10``) to undo the 1/C of the mean.
The attack objective is the per-sample KL summed over classes (the official ``KLDivLoss`` with
``reduce=False``, then ``torch.sum``); sign steps make its overall scale irrelevant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from kdbench import Method, Number, Objective, StepContext, StrictModel
from kdbench.attacks.objectives import kl_to
from kdbench.losses import kl_log_eps

__all__ = ["RSLAD", "RSLADConfig", "rslad_kl"]

Reduction = Literal["mean", "batchmean"]


class RSLADConfig(StrictModel):
    adv_weight: Number = Field(5 / 6, ge=0, description='weight of KL(p_T(x) || p_S(x\')); fractions like "5/6"')
    clean_weight: Number = Field(1 / 6, ge=0, description="weight of KL(p_T(x) || p_S(x)); 0 skips the clean pass")
    scale: Number = Field(1.0, gt=0, description="multiplies both terms; the official CIFAR-100 scripts use 10")
    reduction: Reduction = Field(
        "mean",
        description='"mean" over batch x classes (official torch.mean), "batchmean": sum over classes, batch mean',
    )

    @model_validator(mode="after")
    def _some_term(self) -> RSLADConfig:
        if self.adv_weight == 0 and self.clean_weight == 0:
            raise ValueError("adv_weight and clean_weight are both 0: the loss would be empty")
        return self


def rslad_kl(student_logits: Tensor, teacher_probs: Tensor, reduction: Reduction = "mean") -> Tensor:
    """The official RSLAD KL: ``-b * a + b * log(b + 1e-5)`` with ``a = log_softmax(z_S)``, ``b = p_T``.

    ``student_logits: (B, C)``, ``teacher_probs: (B, C)`` (rows sum to 1) -> scalar, averaged over all
    B x C elements (``"mean"``) or summed over classes and averaged over the batch (``"batchmean"``).
    """
    return kl_log_eps(student_logits, teacher_probs, reduction)


class RSLAD(Method):
    """RSLAD: the teacher's clean soft labels supervise the student on clean and PGD inputs alike."""

    paper = "https://arxiv.org/abs/2108.07969"

    Config = RSLADConfig
    config: RSLADConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = True
    # rslad_inner_loss calls model.eval() before the attack and model.train() after it.
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "eval"
    attack_defaults: ClassVar[Mapping[str, Any]] = {"random_start": "normal"}

    def _teacher_probs(self, ctx: StepContext) -> Tensor:
        return F.softmax(ctx.teacher_clean.logits.float(), dim=1)

    def attack_objective(self, ctx: StepContext) -> Objective:
        return kl_to(self._teacher_probs(ctx))

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c = self.config
        target = self._teacher_probs(ctx)
        terms: dict[str, Tensor] = {}
        if c.adv_weight > 0:
            terms["kl_adv"] = c.scale * c.adv_weight * rslad_kl(ctx.student_adv.logits, target, c.reduction)
        if c.clean_weight > 0:
            terms["kl_clean"] = c.scale * c.clean_weight * rslad_kl(ctx.student_clean.logits, target, c.reduction)
        return terms
