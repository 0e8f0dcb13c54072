"""``crd``: Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020,
arXiv:1910.10699; code github.com/HobbitLong/RepDistiller, ``crd/criterion.py`` and ``crd/memory.py``).

On the penultimate pooled features of the clean input, embedded by trainable heads
``s = g_S(f_S(x))``, ``t = g_T(f_T(x))`` (linear to d = 128, then L2 normalisation)::

    CRD  = L_T + L_S                                  (symmetric NCE)
    L_T  = mean_b -( log h(t_b, m_S[i_b]) + sum_k log(1 - h(t_b, m_S[j_bk])) )   teacher-anchored
    L_S  = mean_b -( log h(s_b, m_T[i_b]) + sum_k log(1 - h(s_b, m_T[j_bk])) )   student-anchored
    h(a, v) = P / (P + N / M),   P = exp(a.v / tau) / Z
    loss = CE(S(x), y) + beta * CRD  (+ kd_weight * T^2 KL(p_T(x)/T || p_S(x)/T), off by default)

``m_S``, ``m_T`` are the memory banks of student and teacher embeddings, ``i_b`` the sample's dataset
index (the positive, mode "exact"), ``j_bk`` N = 16384 rows of other classes, M the dataset size,
tau = 0.07, beta = 0.8; each side has its own ``Z``, fixed on the first batch. After the loss, rows
``i_b`` of both banks move to the new embeddings with momentum 0.5 and are renormalised.

Official-code behaviour followed (RepDistiller ``train_student.py --distill crd -r 1 -a 0 -b 0.8``):
the positive of an anchor is the *memory row* of its own sample, not the other side's current
embedding (``idx[:, 0] = index`` in ``ContrastMemory``), so the student is trained through the
student-anchored half and the teacher head through the teacher-anchored half; Z per side as
``M * mean(exp(scores))`` of the first batch; memory init U(-s, s), s = 1/sqrt(d/3); the
same negative rows for both halves. kdbench's choices (row labels learnt from batches, top-k
sampling on the device, N clamped to M - 1) are listed in `kdbench_plugins._contrastive`.

The teacher's logits are read only by the optional KD term: with ``kd_weight > 0`` the teacher must
share the student's classes (checked at construction); with the default ``kd_weight = 0`` any teacher
works, e.g. a CIFAR-100 teacher for a CIFAR-10 student.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from kdbench_plugins._contrastive import ContrastiveConfig, ContrastMemory, Embed, effective_negatives
from kdbench_plugins._contrastive import nce_loss_from_logits as _nce
from kdbench_plugins.kd import kd_divergence
from pydantic import Field
from torch import Tensor

from kdbench import Method, MethodSetup, StepContext, UserError
from kdbench.engine.distributed import Distributed

__all__ = ["CRD", "CRDConfig"]


class CRDConfig(ContrastiveConfig):
    beta: float = Field(0.8, ge=0, description="weight of the CRD term (RepDistiller -b 0.8)")
    kd_weight: float = Field(0.0, ge=0, description="weight of an extra KD term on clean logits (CRD+KD: 1); 0 = off")
    kd_temperature: float = Field(4.0, gt=0, description="temperature T of the optional KD term")


class CRD(Method):
    """Contrastive representation distillation: CE plus symmetric NCE between embedded features."""

    paper = "https://arxiv.org/abs/1910.10699"

    Config = CRDConfig
    config: CRDConfig
    needs_teacher: ClassVar[bool] = True
    # Only the optional KD term reads teacher logits: see teacher_logit_readers.
    uses_teacher_logits: ClassVar[bool] = False
    # Data-parallel: the memory banks all-gather every update (enter_data_parallel).
    supports_data_parallel: ClassVar[bool] = True

    @classmethod
    def teacher_logit_readers(cls, config: CRDConfig) -> list[str]:  # type: ignore[override]
        return ["kd_weight > 0"] if config.kd_weight > 0 else []

    def __init__(self, config: CRDConfig, setup: MethodSetup):
        super().__init__(config, setup)
        if config.kd_weight > 0 and setup.teacher_num_classes != setup.num_classes:
            raise UserError(
                f"crd: kd_weight > 0 compares teacher and student logits, but the teacher has "
                f"{setup.teacher_num_classes} classes and the student {setup.num_classes}; set method.kd_weight = 0"
            )
        assert setup.teacher_feature_dim is not None  # needs_teacher: the engine builds a teacher
        self.embed_s = Embed(setup.student_feature_dim, config.embed_dim)
        self.embed_t = Embed(setup.teacher_feature_dim, config.embed_dim)
        self.memory = ContrastMemory(setup.dataset_size, config.embed_dim, ("student", "teacher"), config.momentum)
        self.num_negatives = effective_negatives(config.negatives, setup.dataset_size)

    def enter_data_parallel(self, world: Distributed, seed: int) -> None:
        """Every process keeps the banks of the global batch (`kdbench_plugins._contrastive`)."""
        self.memory.enter_data_parallel(world, seed)

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c, mem = self.config, self.memory
        student, teacher = ctx.student_clean, ctx.teacher_clean
        s = self.embed_s(student.features)
        t = self.embed_t(teacher.features)
        mem.observe_labels(ctx.index, ctx.y)
        negatives = mem.sample_negatives(ctx.y, self.num_negatives, self.setup.num_classes)
        rows = torch.cat([ctx.index[:, None], negatives], dim=1)  # column 0: the positive, the sample itself
        # Teacher-anchored: t against the student bank; student-anchored: s against the teacher bank.
        logits_t = mem.logits("student", t, rows, c.tau)
        logits_s = mem.logits("teacher", s, rows, c.tau)
        n = self.setup.dataset_size
        terms = {
            "crd_t": c.beta * _nce(logits_t, mem.normaliser("student", logits_t), n).mean(),
            "crd_s": c.beta * _nce(logits_s, mem.normaliser("teacher", logits_s), n).mean(),
            "ce": F.cross_entropy(student.logits.float(), ctx.y),
        }
        if c.kd_weight > 0:
            terms["kd"] = c.kd_weight * kd_divergence(student.logits, teacher.logits, c.kd_temperature)
        # After the loss, as RepDistiller: the banks take this batch's embeddings (no autograd).
        mem.update("student", ctx.index, s)
        mem.update("teacher", ctx.index, t)
        return terms
