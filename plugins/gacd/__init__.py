"""``gacd``: Guided Adversarial Contrastive Distillation (Bai, Chen, Zhao, Wen, Jiang & Kot, "Feature
Distillation With Guided Adversarial Contrastive Learning", arXiv:2009.09922, 2020).

The teacher's clean embedding is the anchor; the student's embedding of the adversarial input is
its positive, and student embeddings of other classes (a memory bank) are its negatives::

    t  = g_T(f_T(x))               teacher on the clean input, trainable head g_T
    s+ = g_S(f_S(x'))              student on x' = PGD-10 against the student (the "hard example")
    s- = m_S[j_k], k = 1..N        memory rows of the student's past embeddings, other classes
    J  = E[w log h(t, s+)] + N E[log(1 - h(t, s-))]        (a lower bound on I(t; s))
    h(t, s) = P / (P + N / M),  P = exp(t.s / tau) / Z      (CRD's critic, M = dataset size)
    w  = p_T(y | x)                (sample reweighting: the teacher's probability of the true class)
    loss = CE(S(x'), y) + beta * L_GACD,   L_GACD = -J (mean over the batch),   beta = 0.8

No official code or hyper-parameters are public. From the paper: the teacher-anchored pairs
``(t+, s+), (t+, s1-), ..., (t+, sk-)``, the objective J and its MI bound, CRD's critic with M in the
normaliser, negatives from other classes, the weight ``w = p_T(y | x)`` on the positive term, and
adversarial examples as the student's hard examples with the teacher on clean inputs. kdbench's
choices, each a recipe option (docs/methods/gacd.md has the table):

- ``attack_objective = "gacd"`` (the "guided" attack): PGD-10 (eps 8/255, step 2/255, uniform start)
  maximising the per-sample contrastive loss of the positive pair, ``-log h(t_b, s(x'_b))``. The
  weight and ``Z`` scale each sample's gradient by a positive factor, which neither the L-inf sign nor
  the L2 normalisation sees, so the attack leaves them out. ``"ce"``: CE(S(x'), y) as in ARD;
  ``"kl"``: KL(p_T(x) || p_S(x')) as in RSLAD.
- ``attack_bn_mode = "eval"``: the student's BatchNorm uses its running statistics during the attack,
  as in RSLAD (which also attacks a distillation objective) and TRADES. Then each sample's objective
  depends on that sample only (train-mode BN couples a batch, so the per-sample guided objective would
  not be per sample), and the ten attack passes do not move the running statistics with adversarial
  batches the optimiser never trains on. ARD's "train" mode is the alternative; it is not an option.
- heads (linear to 128, L2 norm), tau = 0.07, N = 16384 (clamped to M - 1), memory momentum 0.5 and
  Z fixed on the first batch: as in CRD (`kdbench_plugins._contrastive`). The student bank stores s+
  (the embedding of x', the input the student trains on), so negatives are adversarial embeddings of
  other samples; storing clean embeddings would cost an extra student pass per step. Only the
  positive is the current embedding (it carries the gradient to the student); negatives are memory
  rows, as in CRD. No teacher bank: the loss is teacher-anchored only.
- ``weight_source = "clean"``: ``w = p_T(y | x)``; ``"adversarial"``: ``p_T(y | x')`` (one more
  teacher pass); ``"off"``: ``w = 1`` (the ablation); ``"teacher_max"``: ``max_c p_T(c | x)``, the
  teacher's confidence in its own prediction, which needs no shared label space.
- ``beta = 0.8`` (CRD's weight), ``kd_weight = 0`` (optional ``T^2 KL(p_T(x)/T || p_S(x')/T)``, T = 4).

Across label spaces (teacher and student with different classes) only the parts that read no
teacher logit in the student's classes work: ``weight_source`` "off" or "teacher_max", attack
"gacd" or "ce", ``kd_weight = 0``; anything else is refused at construction.
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
    estimate_z,
    nce_loss_from_logits,
)
from kdbench_plugins.kd import kd_divergence
from pydantic import Field
from torch import Tensor

from kdbench import Method, MethodSetup, ModelOutput, Objective, StepContext, UserError
from kdbench.attacks.objectives import cross_entropy, kl_to

__all__ = ["GACD", "GACDConfig", "confidence_weights"]

WeightSource = Literal["clean", "adversarial", "off", "teacher_max"]


class GACDConfig(ContrastiveConfig):
    beta: float = Field(0.8, ge=0, description="weight of the GACD contrastive term")
    weight_source: WeightSource = Field(
        "clean",
        description="positive-term weight w: p_T(y|x) 'clean', p_T(y|x') 'adversarial', 1 'off', "
        "max_c p_T(c|x) 'teacher_max' (works across label spaces)",
    )
    attack_objective: Literal["gacd", "ce", "kl"] = Field(
        "gacd",
        description="what PGD maximises: 'gacd' the positive pair's contrastive loss (guided), "
        "'ce' CE(S(x'), y) (ARD), 'kl' KL(p_T(x) || p_S(x')) (RSLAD)",
    )
    kd_weight: float = Field(0.0, ge=0, description="weight of an extra KD term T^2 KL(p_T(x)/T || p_S(x')/T); 0 = off")
    kd_temperature: float = Field(4.0, gt=0, description="temperature T of the optional KD term")


def confidence_weights(source: WeightSource, teacher_logits: Tensor | None, y: Tensor) -> Tensor | None:
    """The positive-term weights ``(B,)``: ``p_T(y_b | .)`` or ``max_c p_T(c | .)``; None for "off".

    ``teacher_logits: (B, C_T)`` on x (or x' for "adversarial"); no autograd reaches the weights.
    """
    if source == "off" or teacher_logits is None:
        return None
    p = F.softmax(teacher_logits.detach().float(), dim=1)
    if source == "teacher_max":
        return p.amax(dim=1)
    return p.gather(1, y[:, None]).squeeze(1)


class GACD(Method):
    """Teacher-anchored contrastive distillation onto adversarial student features, confidence-weighted."""

    Config = GACDConfig
    config: GACDConfig
    needs_teacher: ClassVar[bool] = True
    # Teacher logits are read only by some options: see teacher_logit_readers.
    uses_teacher_logits: ClassVar[bool] = False
    # The memory bank would need an all-gather of every process's rows: not implemented yet.
    supports_data_parallel: ClassVar[bool] = False
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
                "use weight_source = 'off' or 'teacher_max', attack_objective = 'gacd' or 'ce', kd_weight = 0"
            )
        assert setup.teacher_feature_dim is not None  # needs_teacher: the engine builds a teacher
        self.embed_s = Embed(setup.student_feature_dim, config.embed_dim)
        self.embed_t = Embed(setup.teacher_feature_dim, config.embed_dim)
        self.memory = ContrastMemory(setup.dataset_size, config.embed_dim, ("student",), config.momentum)
        self.num_negatives = effective_negatives(config.negatives, setup.dataset_size)

    def attack_objective(self, ctx: StepContext) -> Objective:
        mode = self.config.attack_objective
        if mode == "ce":
            return cross_entropy(ctx.y)
        if mode == "kl":
            return kl_to(F.softmax(ctx.teacher_clean.logits.float(), dim=1))
        with torch.no_grad():
            t = self.embed_t(ctx.teacher_clean.features)
        stored_z, n_data = self.memory.z("student"), self.setup.dataset_size
        # Z only sets the objective's value (see the module docstring); before the first loss fixes it,
        # the batch's own estimate stands in.
        log_ratio = math.log(self.num_negatives / n_data)

        def objective(out: ModelOutput) -> Tensor:
            logit = (t * self.embed_s(out.features)).sum(dim=1) / self.config.tau
            z = torch.where(stored_z > 0, stored_z, estimate_z(logit, n_data))
            return -F.logsigmoid(logit - z.log() - log_ratio)

        return objective

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        c, mem = self.config, self.memory
        adv, teacher = ctx.student_adv, ctx.teacher_clean
        s = self.embed_s(adv.features)
        t = self.embed_t(teacher.features)
        mem.observe_labels(ctx.index, ctx.y)
        negatives = mem.sample_negatives(ctx.y, self.num_negatives, self.setup.num_classes)
        positive = (t * s).sum(dim=1, keepdim=True) / c.tau
        logits = torch.cat([positive, mem.logits("student", t, negatives, c.tau)], dim=1)
        z = mem.normaliser("student", logits)
        source = c.weight_source
        weight_logits = None if source == "off" else (ctx.teacher_adv if source == "adversarial" else teacher).logits
        weights = confidence_weights(source, weight_logits, ctx.y)
        terms = {
            "ce_adv": F.cross_entropy(adv.logits.float(), ctx.y),
            "gacd": c.beta * nce_loss_from_logits(logits, z, self.setup.dataset_size, weights).mean(),
        }
        if c.kd_weight > 0:
            terms["kd"] = c.kd_weight * kd_divergence(adv.logits, teacher.logits, c.kd_temperature)
        mem.update("student", ctx.index, s)  # after the loss, without autograd
        return terms
