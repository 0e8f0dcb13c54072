"""``gacd``: Guided Adversarial Contrastive Distillation (Bai, Chen, Zhao, Wen, Jiang & Kot, "Feature
Distillation With Guided Adversarial Contrastive Learning", arXiv:2009.09922, 2020).

The teacher's clean embedding is the anchor of the student's embedding of the adversarial input
(the positive pair); embeddings of samples of other classes, kept in memory banks, are the negatives::

    t  = g_T(f_T(x))               teacher on the clean input, trainable head g_T
    s  = g_S(f_S(x'))              student on x' = PGD-10 against the student (the "hard example")
    h(a, v) = P / (P + N / M),  P = exp(a.v / tau) / Z      (CRD's critic, M = dataset size)
    w  = p_T(y | x)                (sample reweighting: the teacher's probability of the true class)
    L_T = -( w log h(t, s) + sum_k log(1 - h(t, m_S[j_k])) )     teacher-anchored (the paper's pairs)
    L_S = -( w log h(s, t) + sum_k log(1 - h(s, m_T[j_k])) )     student-anchored (CRD's mirror half)
    loss = CE(S(x'), y) + beta * mean_b (L_T + L_S),   beta = 0.8

``m_S``, ``m_T``: memory banks of past student (adversarial) and teacher embeddings; ``j_k``: N rows
of other classes. ``-L_T`` is the paper's J = E[log P(1|t,s)] + N E[log P(0|t,s)], a lower bound on
I(t; s).

No official code or hyper-parameters are public. From the paper: the teacher-anchored pairs
``(t+, s+), (t+, s1-), ..., (t+, sk-)``, the objective J and its MI bound, CRD's critic with M in the
normaliser, negatives from other classes, the weight ``w = p_T(y | x)`` on the positive term, and
adversarial examples as the student's hard examples with the teacher on clean inputs. kdbench's
choices, each a recipe option (docs/methods/gacd.md has the table and the measurements behind them):

- ``anchors = "both"``: the teacher-anchored half ``L_T`` plus its student-anchored mirror ``L_S``,
  the symmetric estimator of CRD's code, where each half trains the head of its own anchor: in
  ``L_T`` the positive ``s`` is detached (``L_T`` trains ``g_T``), in ``L_S`` the positive ``t`` is
  (``L_S`` trains the student and ``g_S``). With memory banks the negatives ``m_S[j]`` carry no
  gradient, so in ``L_T`` alone nothing pushes the student's embeddings of different classes apart:
  the positive only pulls ``s`` towards ``t``, and ``t`` towards ``s``. Measured on CIFAR-10
  (docs/methods/gacd.md), the embeddings then collapse (memory rows of different classes at cosine
  0.99) and the student gains no robustness. With both halves the student's embeddings stay apart,
  but the teacher's still collapse (an open problem, measured and discussed in docs/methods/gacd.md).
  ``"teacher"`` keeps ``L_T`` only, with gradients to both sides (the literal reading; an ablation).
- ``attack_objective = "gacd_ce"``: PGD-10 (eps 8/255, step 2/255, uniform start) maximising
  ``CE(S(x'), y) + beta * G(x')``, the student's per-sample training loss as a function of x' up to
  the weight (Madry-style: the attack maximises what the student minimises). ``G`` is the guided
  objective, the contrastive loss of the positive pair as a function of x': with ``anchors = "both"``
  the student-anchored half ``-log h(s(x'), t) - sum_k log(1 - h(s(x'), m_T[j_k]))`` (x' pulls the
  student's embedding away from the teacher's and towards the teacher's embeddings of other classes:
  the teacher guides the attack); with ``anchors = "teacher"`` ``-log h(t, s(x'))``. Unweighted: the
  weight says how much a sample's positive should pull in training, not which perturbation is
  hardest. ``"gacd"``: ``G`` alone, METHODS.md's suggested default; measured on CIFAR-10 it moves the
  embedding but hardly the prediction (training accuracy on x' 57 %, as on clean inputs) and the
  student has almost no robustness (4.0 % PGD-20 against 24.4 % with ``"gacd_ce"``, docs/results.md),
  so it is the ablation and ``"gacd_ce"`` the default.
  ``"ce"``: CE(S(x'), y) as in ARD; ``"kl"``: KL(p_T(x) || p_S(x')) as in RSLAD.
- ``attack_bn_mode = "eval"``: the student's BatchNorm uses its running statistics during the attack,
  as in RSLAD (which also attacks a distillation objective) and TRADES. Then each sample's objective
  depends on that sample only (train-mode BN couples a batch), and the ten attack passes do not move
  the running statistics with adversarial batches the optimiser never trains on.
- heads (linear to 128, L2 norm), tau = 0.07, N = 16384 (clamped to M - 1), memory momentum 0.5 and
  one Z per bank fixed on the first batch: as in CRD (`kdbench_plugins._contrastive`). The student
  bank stores ``s`` (the embedding of x', the input the student trains on). ``positives = "memory"``
  (the default): the positive of each half is the sample's own row of the other side's bank, as
  RepDistiller's CRD does, in the loss and the guided attack. ``"current"``: the other side's current
  embedding (the literal reading of the paper's pair (t+, s+), s+ the feature of this step's hard
  example); measured, it collapses the teacher's embeddings and the CPU comparison's student reached
  6.4 points less clean accuracy at the same robust accuracy (docs/methods/gacd.md). With
  ``anchors = "teacher"`` only "current" is possible, and is then the default.
- ``weight_source = "clean"``: ``w = p_T(y | x)``; ``"adversarial"``: ``p_T(y | x')`` (one more
  teacher pass); ``"off"``: ``w = 1`` (the ablation); ``"teacher_max"``: ``max_c p_T(c | x)``, the
  teacher's confidence in its own prediction, which needs no shared label space. The weight applies
  to the positive term of both halves.
- ``beta = 0.8`` (CRD's weight), ``kd_weight = 0`` (optional ``T^2 KL(p_T(x)/T || p_S(x')/T)``, T = 4).

Across label spaces (teacher and student with different classes) only the parts that read no
teacher logit in the student's classes work: ``weight_source`` "off" or "teacher_max", attack
"gacd", "gacd_ce" or "ce", ``kd_weight = 0``; anything else is refused at construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from kdbench_plugins._contrastive import (
    ContrastiveConfig,
    ContrastMemory,
    Embed,
    effective_negatives,
    nce_loss_from_logits,
)
from kdbench_plugins.kd import kd_divergence
from pydantic import Field, model_validator
from torch import Tensor

from kdbench import Method, MethodSetup, ModelOutput, Objective, StepContext, UserError
from kdbench.attacks.objectives import cross_entropy, kl_to
from kdbench.engine.distributed import Distributed
from kdbench.losses import true_class_probability

__all__ = ["GACD", "GACDConfig", "confidence_weights"]

WeightSource = Literal["clean", "adversarial", "off", "teacher_max"]


class GACDConfig(ContrastiveConfig):
    beta: float = Field(0.8, ge=0, description="weight of the GACD contrastive term")
    weight_source: WeightSource = Field(
        "clean",
        description="positive-term weight w: p_T(y|x) 'clean', p_T(y|x') 'adversarial', 1 'off', "
        "max_c p_T(c|x) 'teacher_max' (works across label spaces)",
    )
    anchors: Literal["both", "teacher"] = Field(
        "both",
        description="'both': teacher-anchored pairs plus the student-anchored mirror half (CRD's symmetric "
        "estimator); 'teacher': teacher-anchored only (the literal reading; collapses, an ablation)",
    )
    positives: Literal["current", "memory"] = Field(
        "memory",
        description="positive of each half: the other side's 'memory' row for the sample (RepDistiller's CRD; "
        "avoids the teacher-side collapse) or its 'current' embedding; default 'memory' ('current' with "
        "anchors = 'teacher', the only one possible there)",
    )
    attack_objective: Literal["gacd", "gacd_ce", "ce", "kl"] = Field(
        "gacd_ce",
        description="what PGD maximises: 'gacd' the positive pair's contrastive loss as a function of x' "
        "(guided), 'gacd_ce' CE(S(x'), y) + beta * that, 'ce' CE(S(x'), y) (ARD), 'kl' KL(p_T(x) || p_S(x')) (RSLAD)",
    )
    kd_weight: float = Field(0.0, ge=0, description="weight of an extra KD term T^2 KL(p_T(x)/T || p_S(x')/T); 0 = off")
    kd_temperature: float = Field(4.0, gt=0, description="temperature T of the optional KD term")

    @model_validator(mode="before")
    @classmethod
    def _default_positives_follow_anchors(cls, data: Any) -> Any:
        # The teacher-anchored ablation has no student bank to take a memory positive from.
        if isinstance(data, dict) and "positives" not in data and data.get("anchors") == "teacher":
            return {**data, "positives": "current"}
        return data

    @model_validator(mode="after")
    def _memory_positives_need_both_anchors(self) -> GACDConfig:
        if self.positives == "memory" and self.anchors == "teacher":
            raise ValueError("positives = 'memory' needs anchors = 'both' (the student would get no gradient)")
        return self


def confidence_weights(source: WeightSource, teacher_logits: Tensor | None, y: Tensor) -> Tensor | None:
    """The positive-term weights ``(B,)``: ``p_T(y_b | .)`` or ``max_c p_T(c | .)``; None for "off".

    ``teacher_logits: (B, C_T)`` on x (or x' for "adversarial"); no autograd reaches the weights.
    """
    if source == "off" or teacher_logits is None:
        return None
    if source == "teacher_max":
        return F.softmax(teacher_logits.detach().float(), dim=1).amax(dim=1)
    return true_class_probability(teacher_logits.detach(), y)


class GACD(Method):
    """Teacher-anchored contrastive distillation onto adversarial student features, confidence-weighted."""

    paper = "https://arxiv.org/abs/2009.09922"

    Config = GACDConfig
    config: GACDConfig
    needs_teacher: ClassVar[bool] = True
    # Teacher logits are read only by some options: see teacher_logit_readers.
    uses_teacher_logits: ClassVar[bool] = False
    # Data-parallel: the memory banks all-gather every update (enter_data_parallel).
    supports_data_parallel: ClassVar[bool] = True
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "eval"
    attack_defaults: ClassVar[Mapping[str, Any]] = {}  # PGD-10, eps 8/255, step 2/255, uniform start

    @classmethod
    def teacher_logit_readers(cls, config: GACDConfig) -> list[str]:  # type: ignore[override]
        readers = []
        if config.weight_source in ("clean", "adversarial"):
            readers.append(f"weight_source = {config.weight_source!r}")
        if config.attack_objective == "kl":
            readers.append("attack_objective = 'kl'")
        if config.kd_weight > 0:
            readers.append("kd_weight > 0")
        return readers

    def __init__(self, config: GACDConfig, setup: MethodSetup):
        super().__init__(config, setup)
        readers = self.teacher_logit_readers(config)
        if readers and setup.teacher_num_classes != setup.num_classes:
            raise UserError(
                f"gacd: {', '.join(readers)} reads teacher probabilities of the student's classes, but the teacher "
                f"has {setup.teacher_num_classes} classes and the student {setup.num_classes}; across label spaces "
                "use weight_source = 'off' or 'teacher_max', attack_objective other than 'kl', kd_weight = 0"
            )
        assert setup.teacher_feature_dim is not None  # needs_teacher: the engine builds a teacher
        self.embed_s = Embed(setup.student_feature_dim, config.embed_dim)
        self.embed_t = Embed(setup.teacher_feature_dim, config.embed_dim)
        banks = ("student", "teacher") if config.anchors == "both" else ("student",)
        self.memory = ContrastMemory(setup.dataset_size, config.embed_dim, banks, config.momentum)
        self.num_negatives = effective_negatives(config.negatives, setup.dataset_size)

    def enter_data_parallel(self, world: Distributed, seed: int) -> None:
        """Every process keeps the banks of the global batch (`kdbench_plugins._contrastive`)."""
        self.memory.enter_data_parallel(world, seed)

    def attack_objective(self, ctx: StepContext) -> Objective:
        mode = self.config.attack_objective
        if mode == "ce":
            return cross_entropy(ctx.y)
        if mode == "kl":
            return kl_to(F.softmax(ctx.teacher_clean.logits.float(), dim=1))
        guided = self._guided_objective(ctx)
        if mode == "gacd":
            return guided
        ce, beta = cross_entropy(ctx.y), self.config.beta

        def guided_and_ce(out: ModelOutput) -> Tensor:
            return ce(out) + beta * guided(out)

        return guided_and_ce

    def _guided_objective(self, ctx: StepContext) -> Objective:
        """Per-sample contrastive loss of the positive pair as a function of x' (module docstring).

        The negatives are drawn once per step, before the attack's first iteration; the loss draws its own.
        The stored ``Z`` is used; before the first loss fixes it, the batch's own estimate stands in.
        """
        c, mem, n_data = self.config, self.memory, self.setup.dataset_size
        with torch.no_grad():
            t = self.embed_t(ctx.teacher_clean.features)
        if c.anchors == "teacher":
            z_s, log_ratio = mem.z("student"), math.log(self.num_negatives / n_data)

            def teacher_anchored(out: ModelOutput) -> Tensor:
                logit = (t * self.embed_s(out.features)).sum(dim=1) / c.tau
                z = torch.where(z_s > 0, z_s, mem.estimate_z(logit))
                return -F.logsigmoid(logit - z.log() - log_ratio)

            return teacher_anchored
        mem.observe_labels(ctx.index, ctx.y)
        rows = mem.sample_negatives(ctx.y, self.num_negatives, self.setup.num_classes)
        if c.positives == "memory":
            rows = torch.cat([ctx.index[:, None], rows], dim=1)  # column 0: the sample's own teacher row
        z_t = mem.z("teacher")

        def guided(out: ModelOutput) -> Tensor:
            s = self.embed_s(out.features)
            # The student-anchored half of this sample: s(x') against its positive and m_T[j] (negatives).
            logits = mem.logits("teacher", s, rows, c.tau)
            if c.positives == "current":
                logits = torch.cat([(s * t).sum(dim=1, keepdim=True) / c.tau, logits], dim=1)
            return nce_loss_from_logits(logits, torch.where(z_t > 0, z_t, mem.estimate_z(logits)), n_data)

        return guided

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c, mem = self.config, self.memory
        adv, teacher = ctx.student_adv, ctx.teacher_clean
        s = self.embed_s(adv.features)
        t = self.embed_t(teacher.features)
        mem.observe_labels(ctx.index, ctx.y)
        rows = mem.sample_negatives(ctx.y, self.num_negatives, self.setup.num_classes)  # the negatives
        source = c.weight_source
        weight_logits = None if source == "off" else (ctx.teacher_adv if source == "adversarial" else teacher).logits
        weights = confidence_weights(source, weight_logits, ctx.y)
        n = self.setup.dataset_size
        symmetric = c.anchors == "both"
        # Each half trains the head of its own anchor, as in CRD: with both halves the other side's
        # positive is detached (the values are the same; only the gradients differ).
        s_pos, t_pos = (s.detach(), t.detach()) if symmetric else (s, t)
        if c.positives == "memory":  # column 0: the sample's own row of the other side's bank, as in CRD
            rows = torch.cat([ctx.index[:, None], rows], dim=1)
        # Teacher-anchored: t against the student bank (the paper's pairs).
        logits_t = mem.logits("student", t, rows, c.tau)
        if c.positives == "current":
            logits_t = torch.cat([(t * s_pos).sum(1, keepdim=True) / c.tau, logits_t], 1)
        terms = {
            "ce_adv": F.cross_entropy(adv.logits.float(), ctx.y),
            "gacd_t": c.beta * nce_loss_from_logits(logits_t, mem.normaliser("student", logits_t), n, weights).mean(),
        }
        if symmetric:  # student-anchored: s against the teacher bank
            logits_s = mem.logits("teacher", s, rows, c.tau)
            if c.positives == "current":
                logits_s = torch.cat([(s * t_pos).sum(1, keepdim=True) / c.tau, logits_s], 1)
            z_t = mem.normaliser("teacher", logits_s)
            terms["gacd_s"] = c.beta * nce_loss_from_logits(logits_s, z_t, n, weights).mean()
        if c.kd_weight > 0:
            terms["kd"] = c.kd_weight * kd_divergence(adv.logits, teacher.logits, c.kd_temperature)
        # After the loss, without autograd: the banks take this batch's embeddings.
        mem.update("student", ctx.index, s)
        if symmetric:
            mem.update("teacher", ctx.index, t)
        return terms
