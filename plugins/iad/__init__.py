"""``iad``: Introspective Adversarial Distillation, IAD-I (Zhu, Yao, Han, Zhang, Liu, Niu, Zhou, Xu &
Yang, "Reliable Adversarial Distillation with Unreliable Teachers", ICLR 2022, arXiv:2106.04928; code
github.com/ZFancy/IAD@a8091a8, script ``IAD-I.py``, the ARD-based variant).

    x'   = PGD-10 maximising sum_i CE(S(x'_i), y_i)          student BatchNorm in train mode, teacher eval
    a_i  = p_T(y_i | x'_i) ^ beta                            teacher on x', no gradient
    loss = A tau^2 1/B sum_i KL(softmax(z_T(x_i)/tau) || softmax(z_S(x'_i)/tau))        term "kd_adv"
         + A 1/B sum_i (1 - a_i) KL(p_S(x_i) || p_S(x'_i))   only when epoch >= begin   term "introspect"
         + (1 - A) CE(S(x), y)                               only when A < 1            term "ce"

KLs are summed over classes and divided by B. Where the teacher is fooled by the student's own
adversarial example (``a_i`` small), the student also learns from its clean prediction: the
"introspection" term. Its target p_S(x) is *not* detached (``IAD-I.py`` keeps the graph of
``basic_net(inputs)``), so gradients flow into both student passes; it has no temperature.

Defaults are the official code's (IAD-I.py:26-35,173): tau = 1, A = 1 (so the CE term is off),
beta = 0.1, begin = 60 (0-based, compared with ``ctx.epoch``); PGD-10 with step 2/255 from a
uniform start inside ``net.train()``. Before ``begin`` the official code has no introspection term,
and this plugin then also skips the teacher's pass on x' and the student's clean pass. The teacher
term of IAD-I is not weighted by ``a_i``; ``weight_teacher_term = true`` weights it as IAD-II
(AKD^2-based, IAD-II.py:190) does, from ``begin`` on. The differences from the official code are
listed in docs/methods/iad.md.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdbench import Method, Objective, StepContext, StrictModel
from kdbench.attacks.objectives import cross_entropy
from kdbench.losses import softened_kl, true_class_probability

__all__ = ["IAD", "IADConfig", "teacher_trust"]


class IADConfig(StrictModel):
    temperature: float = Field(1.0, gt=0, description="softmax temperature tau of the teacher term (IAD-I: 1)")
    alpha: float = Field(
        1.0, ge=0, le=1, description="weight A of both distillation terms; CE on clean x gets 1 - A (IAD-I: 1)"
    )
    beta: float = Field(0.1, ge=0, description="exponent of the trust a_i = p_T(y | x')^beta (IAD-I: 0.1)")
    warmup_epochs: int = Field(
        60, ge=0, description="0-based epoch 'begin' from which the introspection term is on (IAD-I: 60)"
    )
    weight_teacher_term: bool = Field(
        False, description="also weight the teacher term by a_i from warmup_epochs on (IAD-II); IAD-I: false"
    )


def teacher_trust(teacher_adv_logits: Tensor, y: Tensor, beta: float) -> Tensor:
    """``a_i = softmax(z_T(x'_i))_{y_i} ^ beta``, detached: ``(B, C), (B,) -> (B,)`` in [0, 1]."""
    return true_class_probability(teacher_adv_logits.detach(), y).pow(beta)


class IAD(Method):
    """IAD-I: ARD at tau = 1 plus a self-distillation term weighted by how much the teacher is fooled by x'."""

    Config = IADConfig
    config: IADConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = True
    # IAD-I reuses ARD's AttackPGD inside net.train(): BatchNorm uses (and updates) batch statistics.
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "train"

    @classmethod
    def run_problems(cls, config: IADConfig, *, epochs: int) -> dict[str, str]:  # type: ignore[override]
        if config.warmup_epochs >= epochs:
            return {
                "warmup_epochs": f"the introspection term starts at epoch {config.warmup_epochs} (0-based) but the "
                f"run has {epochs} epochs, so it would never be on; set method.warmup_epochs below train.epochs"
            }
        return {}

    def attack_objective(self, ctx: StepContext) -> Objective:
        return cross_entropy(ctx.y)

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c = self.config
        adv = ctx.student_adv.logits
        # ctx.epoch is a Python int: this branch costs no host synchronisation.
        introspect = ctx.epoch >= c.warmup_epochs
        trust = teacher_trust(ctx.teacher_adv.logits, ctx.y, c.beta) if introspect else None
        teacher_kl = softened_kl(adv, ctx.teacher_clean.logits.detach(), c.temperature, "none")
        if c.weight_teacher_term and trust is not None:
            teacher_kl = trust * teacher_kl
        terms = {"kd_adv": c.alpha * teacher_kl.mean()}
        if trust is not None:
            self_kl = softened_kl(adv, ctx.student_clean.logits, 1.0, "none")  # target keeps its gradient
            terms["introspect"] = c.alpha * ((1 - trust) * self_kl).mean()
        if c.alpha < 1:
            terms["ce"] = (1 - c.alpha) * F.cross_entropy(ctx.student_clean.logits.float(), ctx.y)
        return terms
