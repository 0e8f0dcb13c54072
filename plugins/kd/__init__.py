"""``kd``: knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
Network", 2015, arXiv:1503.02531).

    loss = (1 - a) * CE(S(x), y) + a * T^2 * KL(softmax(z_T(x) / T) || softmax(z_S(x) / T))

with the KL divergence summed over classes and averaged over the batch. Defaults follow
RepDistiller (Tian et al. 2020, github.com/HobbitLong/RepDistiller): T = 4, CE weight 0.1, KD weight
0.9. In robust-distillation tables "KD" is natural distillation from the robust teacher: no attack.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdbench import Method, StepContext, StrictModel
from kdbench.losses import softened_kl

__all__ = ["KD", "KDConfig", "kd_divergence"]


class KDConfig(StrictModel):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight a of the distillation term; CE gets 1 - a")


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * mean_b sum_c p_T log(p_T / p_S)`` with ``p = softmax(z / T)``; logits ``(B, C)``.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al. 2015, section 2).
    """
    return softened_kl(student_logits, teacher_logits, temperature, "batchmean")


class KD(Method):
    """Hinton distillation on clean inputs from the (robust) teacher."""

    paper = "https://arxiv.org/abs/1503.02531"

    Config = KDConfig
    config: KDConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = True

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        a = self.config.alpha
        student = ctx.student_clean.logits
        terms = {"kd": a * kd_divergence(student, ctx.teacher_clean.logits, self.config.temperature)}
        if a < 1:
            terms["ce"] = (1 - a) * F.cross_entropy(student.float(), ctx.y)
        return terms
