"""``feature_mse``: distil the teacher's penultimate features through a learned linear projection.

FitNets-style hint learning (Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for
Thin Deep Nets", ICLR 2015, arXiv:1412.6550), applied to the pooled penultimate features, optionally
on adversarial inputs (feature-level adversarial distillation, as the robust-distillation literature
uses it as a baseline)::

    loss = w_ce * CE(z_S(x_s), y) + w_feat * mean_b mean_d (W f_S(x_s) + b - f_T(x))_d^2

``f_S: (B, D_S)`` and ``f_T: (B, D_T)`` are the student's and the teacher's features, ``W: (D_T, D_S)``
and ``b: (D_T,)`` a trainable projection owned by the method (the FitNets regressor; here linear on
pooled features rather than a convolution on feature maps). ``x_s`` is the clean input x, or with
``adversarial = true`` the training attack's x' (PGD on the student's cross-entropy, student
BatchNorm in eval mode), so that the student learns to map perturbed inputs to the teacher's clean
features. Only features are compared: a teacher of any label space works.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from kdbench import Method, MethodSetup, Objective, StepContext, StrictModel
from kdbench.attacks.objectives import cross_entropy
from pydantic import Field
from torch import Tensor, nn

__all__ = ["FeatureMSE", "FeatureMSEConfig", "projected_feature_mse"]


class FeatureMSEConfig(StrictModel):
    feature_weight: float = Field(1.0, ge=0, description="weight w_feat of the feature MSE term")
    ce_weight: float = Field(1.0, ge=0, description="weight w_ce of the cross-entropy term (0 drops it)")
    adversarial: bool = Field(False, description="match features of x' (training attack) instead of x")


def projected_feature_mse(projection: nn.Module, student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """``mean_b mean_d (projection(f_S) - f_T)_d^2``: ``(B, D_S), (B, D_T)`` -> scalar, float32.

    The teacher's features are detached (the teacher is frozen; this also holds for a teacher whose
    features were computed with autograd).
    """
    return F.mse_loss(projection(student_features.float()), teacher_features.detach().float())


class FeatureMSE(Method[FeatureMSEConfig]):
    """Feature MSE to the teacher through a linear student->teacher projection (FitNets hint)."""

    Config = FeatureMSEConfig
    needs_teacher: ClassVar[bool] = True
    uses_teacher_logits: ClassVar[bool] = False  # features only: any teacher label space works

    def __init__(self, config: FeatureMSEConfig, setup: MethodSetup):
        super().__init__(config, setup)
        assert setup.teacher_feature_dim is not None  # needs_teacher guarantees a teacher
        # Trainable: the engine adds it to the optimiser and the checkpoint.
        self.proj = nn.Linear(setup.student_feature_dim, setup.teacher_feature_dim)

    def attack_objective(self, ctx: StepContext) -> Objective | None:
        return cross_entropy(ctx.y) if self.config.adversarial else None

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c = self.config
        student = ctx.student_adv if c.adversarial else ctx.student_clean
        terms = {
            "feat": c.feature_weight * projected_feature_mse(self.proj, student.features, ctx.teacher_clean.features)
        }
        if c.ce_weight > 0:
            terms["ce"] = c.ce_weight * F.cross_entropy(student.logits.float(), ctx.y)
        return terms
