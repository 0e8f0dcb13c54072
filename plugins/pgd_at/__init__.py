"""``pgd_at``: PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018, arXiv:1706.06083); "SAT" in robust-distillation tables.

    x' = PGD-k maximising CE(S(x'), y) within the recipe's [attack] threat model
    loss = CE(S(x'), y)

The attack runs with the student's BatchNorm in train mode, as in Madry's and Rice et al.'s
(2020, "Overfitting in adversarially robust deep learning") training code. The recipe's [attack]
table sets the budget (default PGD-10, eps 8/255, step 2/255, uniform random start).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor

from kdbench import Method, Objective, StepContext
from kdbench.attacks.objectives import cross_entropy

__all__ = ["PGDAT"]


class PGDAT(Method):
    """Madry PGD adversarial training: cross-entropy on PGD examples, no teacher."""

    paper = "https://arxiv.org/abs/1706.06083"

    needs_teacher: ClassVar[bool] = False
    uses_teacher_logits: ClassVar[bool] = False
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "train"

    def attack_objective(self, ctx: StepContext) -> Objective:
        return cross_entropy(ctx.y)

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        return {"ce_adv": F.cross_entropy(ctx.student_adv.logits.float(), ctx.y)}
