"""``iad``: Introspective Adversarial Distillation (Zhu, Yao, Han, Zhang, Liu, Niu, Zhou, Xu & Yang,
"Reliable Adversarial Distillation with Unreliable Teachers", ICLR 2022, arXiv:2106.04928;
code github.com/ZFancy/IAD, script ``IAD-I.py``).

ARD whose student, from a warm-up epoch on, partly trusts itself where the teacher is unreliable:

    x'   = PGD-k maximising CE(S(x'), y)                               (student BatchNorm in train mode)
    a_i  = p_T(y_i | x'_i) ^ beta                                      (no gradient; 1 before the warm-up)
    loss = alpha * T^2 * mean_i KL(softmax(z_T(x_i) / T) || softmax(z_S(x'_i) / T))
         + alpha * mean_i (1 - a_i) * KL(p_S(x_i) || p_S(x'_i))
         + (1 - alpha) * CE(S(x), y)

KL per sample summed over classes, then averaged over the batch. a_i is the teacher's probability of
the true class on the student's adversarial example: a teacher fooled by x' (a_i small) hands weight
to the student's own clean prediction, which acts as a second, "introspective" target.

Defaults follow ``IAD-I.py``: T = 1, alpha = 1 (CE off), beta = 0.1, trust from epoch 60 (``--begin``,
0-based, so the 61st epoch; compared with ``ctx.epoch``, also 0-based); PGD-10 with step 2/255 from a
uniform start, run inside ``net.train()``. Before the warm-up epoch the official code leaves the
second term out, i.e. a_i = 1; so does this plugin, and it skips the teacher's pass on x' and the
student's clean pass then. In the second term the clean prediction p_S(x) is not detached (the
official ``basic_net(inputs)`` keeps its graph), so gradients flow through both p_S(x) and p_S(x').

Not implemented: IAD-II (same repository), which also weights the teacher term by a_i and adds a
naturally trained second teacher.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from kdbench import Method, Objective, StepContext, StrictModel
from kdbench.attacks.objectives import cross_entropy
from pydantic import Field
from torch import Tensor

__all__ = ["IAD", "IADConfig", "per_sample_kl", "teacher_trust"]


class IADConfig(StrictModel):
    temperature: float = Field(1.0, gt=0, description="softmax temperature T of the teacher term (IAD-I: 1)")
    alpha: float = Field(1.0, ge=0, le=1, description="weight of both distillation terms; CE on clean x gets 1 - alpha")
    beta: float = Field(0.1, ge=0, description="exponent of the trust a_i = p_T(y | x')^beta")
    warmup_epochs: int = Field(
        60, ge=0, description="0-based epoch from which the trust term is on (before it a_i = 1, i.e. plain ARD)"
    )


def per_sample_kl(target_logits: Tensor, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(z_t / T) || softmax(z / T))`` summed over classes: ``(B, C), (B, C) -> (B,)``.

    Gradients flow through both arguments (detach ``target_logits`` yourself for a fixed target).
    """
    log_p = F.log_softmax(target_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def teacher_trust(teacher_adv_logits: Tensor, y: Tensor, beta: float) -> Tensor:
    """``a_i = softmax(z_T(x'_i))_{y_i} ^ beta``, detached: ``(B, C), (B,) -> (B,)`` in [0, 1]."""
    p_true = F.softmax(teacher_adv_logits.detach().float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    return p_true.pow(beta)


class IAD(Method):
    """IAD: ARD plus a self-distillation term weighted by how little the teacher is fooled by x'."""

    Config = IADConfig
    config: IADConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = True
    # IAD-I reuses ARD's AttackPGD inside net.train().
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "train"

    def attack_objective(self, ctx: StepContext) -> Objective:
        return cross_entropy(ctx.y)

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c = self.config
        adv = ctx.student_adv.logits
        t = c.temperature
        terms = {"kd_adv": c.alpha * t * t * per_sample_kl(ctx.teacher_clean.logits, adv, t).mean()}
        # ctx.epoch is a Python int: this branch costs no host synchronisation.
        if ctx.epoch >= c.warmup_epochs:
            trust = teacher_trust(ctx.teacher_adv.logits, ctx.y, c.beta)
            self_kl = per_sample_kl(ctx.student_clean.logits, adv)
            terms["introspect"] = c.alpha * ((1 - trust) * self_kl).mean()
        if c.alpha < 1:
            terms["ce"] = (1 - c.alpha) * F.cross_entropy(ctx.student_clean.logits.float(), ctx.y)
        return terms
