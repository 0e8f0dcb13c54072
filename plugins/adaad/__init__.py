"""``adaad``: Adaptive Adversarial Distillation (Huang, Chen, Wang, Lu, Cheng & Wang, "Boosting Accuracy and
Robustness of Student Models via Adaptive Adversarial Distillation", CVPR 2023; code
github.com/boyellow/AdaAD@9e5c6e5, ``main.py`` and ``AT_helper.py``).

    x'   = PGD-k from x + 0.001 N(0, 1) maximising sum_i KL(p_T(x'_i) || p_S(x'_i))
           (differentiated through the student AND the teacher; both in eval mode)
    loss = a KL(p_T(x') || p_S(x')) + (1 - a) KL(p_T(x) || p_S(x)),      tau = 1, a = 1

The attack looks for the input where the student disagrees most with the teacher *on that same
input*, so the teacher runs inside every attack iteration: the objective is built with
`kdbench.attacks.objectives.with_teacher`, and the engine's attack runs one teacher forward and
backward per step, with autograd to x' only (teacher frozen, eval mode, the run's autocast).
In the loss, the teacher's logits carry no gradient (main.py:336-339).

Reduction (main.py:341-351): on CIFAR-10 the official code uses ``nn.KLDivLoss()``'s default, the
mean over B x C elements (``reduction = "mean"``, the default here); on CIFAR-100 ``batchmean``
(sum over classes, mean over the batch). With ``a = 1`` (the default) the clean pass is skipped:
its term has weight 0.

Official settings: PGD-10, eps 8/255, step 2/255 (README's "Table 2" command; the argparse defaults
16/255 and 4/255 are its "larger radius" command), a = 1, SGD lr 0.1 (x0.1 at 100 and 150),
momentum 0.9, wd 5e-4, 200 epochs. The headline numbers need an increasing-eps schedule whose form
is not in the code (AdaAD#2): give one with the recipe's ``[attack] eps_schedule``; the default is
fixed 8/255. Differences from the official code: docs/methods/adaad.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import Tensor

from kdbench import Method, ModelOutput, StepContext, StrictModel
from kdbench.attacks.objectives import TeacherObjective, with_teacher
from kdbench.losses import softened_kl

__all__ = ["AdaAD", "AdaADConfig", "adaptive_objective"]

Reduction = Literal["mean", "batchmean"]


class AdaADConfig(StrictModel):
    alpha: float = Field(
        1.0, ge=0, le=1, description="weight a of KL(p_T(x') || p_S(x')); the clean KL gets 1 - a (official: 1)"
    )
    reduction: Reduction = Field(
        "mean",
        description='"mean" over batch x classes (official CIFAR-10, nn.KLDivLoss()), "batchmean" (official CIFAR-100)',
    )


def adaptive_objective() -> TeacherObjective:
    """Per-sample ``KL(p_T(x') || p_S(x'))`` summed over classes, differentiable in both outputs: ``(B,)``.

    Sign steps make the official ``KLDivLoss(size_average=False)`` sum's overall scale irrelevant.
    """

    def objective(student: ModelOutput, teacher: ModelOutput) -> Tensor:
        return softened_kl(student.logits, teacher.logits, 1.0, "none")

    return with_teacher(objective)


class AdaAD(Method):
    """AdaAD: the attack maximises student-teacher disagreement on x'; the student matches the teacher there."""

    Config = AdaADConfig
    config: AdaADConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = True
    # AT_helper.py: model.eval() for the attack, model.train() afterwards.
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "eval"
    attack_defaults: ClassVar[Mapping[str, Any]] = {"random_start": "normal"}

    def attack_objective(self, ctx: StepContext) -> TeacherObjective:
        return adaptive_objective()

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c = self.config
        terms = {
            "kl_adv": c.alpha * softened_kl(ctx.student_adv.logits, ctx.teacher_adv.logits, 1.0, c.reduction),
        }
        if c.alpha < 1:  # a = 1 (the official default) needs no clean pass at all
            clean = softened_kl(ctx.student_clean.logits, ctx.teacher_clean.logits, 1.0, c.reduction)
            terms["kl_clean"] = (1 - c.alpha) * clean
        return terms
