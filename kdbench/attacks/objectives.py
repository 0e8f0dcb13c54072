"""Per-sample objectives an attack maximises: cross-entropy, the Carlini-Wagner margin, KL to a target.

Each factory binds the targets of a batch and returns an `Objective`: ``ModelOutput -> (B,)``. The
logits are cast to float32 first, so a bf16 model gives an fp32 loss and an fp32 input gradient.

`with_teacher` wraps a function of the student's *and* a frozen teacher's output on the same x'
(AdaAD's ``KL(p_T(x') || p_S(x'))``): the training step then runs the teacher inside every attack
iteration, in eval mode, with autograd through the input only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.attacks.base import JointOutput, Objective
from kdbench.models.base import ModelOutput

__all__ = ["TeacherObjective", "cross_entropy", "cw_margin", "cw_margin_loss", "kl_to", "with_teacher"]


def cw_margin_loss(logits: Tensor, y: Tensor, kappa: float = math.inf) -> Tensor:
    """The Carlini-Wagner margin ``min(max_{j != y} z_j - z_y, kappa)`` per sample: ``(B, C), (B,) -> (B,)``.

    Positive exactly when the sample is misclassified. Carlini & Wagner, "Towards Evaluating the
    Robustness of Neural Networks", IEEE S&P 2017, f_6 with confidence kappa. The TRADES / RSLAD
    evaluation code's ``cwloss(output, target, confidence=kappa)`` is ``min(margin - kappa, 0)``: the
    same function up to the constant ``-kappa``, hence the same gradient. The default ``kappa = inf``
    leaves the margin unclamped (the "CW-inf" attack of robust-distillation tables: PGD on this margin).
    """
    z = logits.float()
    z_y = z.gather(1, y.view(-1, 1)).squeeze(1)
    others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -torch.inf)
    margin = others.amax(dim=1) - z_y
    return margin if math.isinf(kappa) else margin.clamp(max=kappa)


def cross_entropy(y: Tensor) -> Objective:
    """``CE(z(x'), y) = -log softmax(z(x'))_y`` per sample (the PGD / FGSM objective of Madry et al. 2018)."""

    def objective(out: ModelOutput) -> Tensor:
        return F.cross_entropy(out.logits.float(), y, reduction="none")

    return objective


def cw_margin(y: Tensor, kappa: float = math.inf) -> Objective:
    """`cw_margin_loss` of the logits on x' (the CW-inf objective)."""

    def objective(out: ModelOutput) -> Tensor:
        return cw_margin_loss(out.logits, y, kappa)

    return objective


def kl_to(target_probs: Tensor) -> Objective:
    """``KL(p || softmax(z(x'))) = sum_c p_c (log p_c - log softmax(z(x'))_c)`` per sample, ``p: (B, C)``.

    The TRADES (Zhang et al. 2019, p = the model's own clean prediction) and RSLAD (Zi et al. 2021,
    p = the teacher's clean prediction) attack objective; terms with ``p_c = 0`` count as 0.
    """
    p = target_probs.detach().float()

    def objective(out: ModelOutput) -> Tensor:
        return F.kl_div(F.log_softmax(out.logits.float(), dim=1), p, reduction="none").sum(dim=1)

    return objective


@dataclass(frozen=True)
class TeacherObjective:
    """A per-sample objective of the student's and a teacher's outputs on the same x': ``(S, T) -> (B,)``.

    Called on a `JointOutput`. ``teacher`` names the teacher: ``"teacher"`` (the recipe's
    ``[teacher]``) or an additional one of ``[teachers.<name>]``. Build it with `with_teacher`.
    """

    fn: Callable[[ModelOutput, ModelOutput], Tensor]
    teacher: str = "teacher"

    def __call__(self, out: JointOutput) -> Tensor:
        return self.fn(out.student, out.teacher)


def with_teacher(fn: Callable[[ModelOutput, ModelOutput], Tensor], teacher: str = "teacher") -> TeacherObjective:
    """An attack objective that also reads ``teacher`` on x' (forward per attack iteration, gradient to x' only).

    ``fn(student_out, teacher_out) -> (B,)``. The teacher stays frozen (eval mode, no parameter
    gradients) and runs under the same autocast as the student.
    """
    return TeacherObjective(fn, teacher)
