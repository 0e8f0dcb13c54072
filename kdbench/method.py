"""The method interface (a distillation loss) and the per-batch step context it reads from.

A method states formulas only: which objective the training attack maximises (or none) and the
named loss terms of one batch. The engine owns loops, data, optimisers, precision and checkpoints.
A method may own trainable modules (embedding heads) and state (memory banks): it is an
``nn.Module``, so both join the optimiser and the checkpoint through ``parameters()`` and
``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from kdbench.attacks.base import Attack, Objective
from kdbench.config import EmptyConfig, StrictModel
from kdbench.models.base import ModelOutput, Network

__all__ = ["Method", "MethodSetup", "StepContext"]


@dataclass(frozen=True)
class MethodSetup:
    """What a method may size itself by, known before training starts."""

    num_classes: int
    student_feature_dim: int
    teacher_feature_dim: int | None
    teacher_num_classes: int | None
    dataset_size: int
    device: torch.device


class Method(nn.Module):
    """Base class of every registered method (distillation loss or teacher-training loss).

    Constructor: ``(config: Config, setup: MethodSetup)``. Required: `loss`. Optional:
    `attack_objective` (default: no attack) and the class attributes below.
    """

    Config: ClassVar[type[StrictModel]] = EmptyConfig
    #: Whether the method distils from a teacher (False for teacher-training methods).
    needs_teacher: ClassVar[bool] = True
    #: Whether the method reads the teacher's logits, which then must share the student's label space.
    uses_teacher_logits: ClassVar[bool] = True
    #: BatchNorm mode of the student while the training attack runs ("train" as in ARD, "eval" as in RSLAD).
    attack_bn_mode: ClassVar[Literal["train", "eval"]] = "eval"
    #: Defaults for the recipe's [attack] table that this method's official code uses (e.g. the start).
    attack_defaults: ClassVar[Mapping[str, Any]] = {}
    #: False when the method keeps per-sample state (memory banks) that is not synchronised across
    #: torchrun processes; the engine then refuses data-parallel runs instead of training on stale rows.
    supports_data_parallel: ClassVar[bool] = True
    #: Link to the method's paper (the leaderboard's "paper" column), e.g. "https://arxiv.org/abs/1503.02531".
    paper: ClassVar[str | None] = None

    def __init__(self, config: StrictModel, setup: MethodSetup):
        super().__init__()
        self.config = config
        self.setup = setup

    @classmethod
    def teacher_logit_readers(cls, config: StrictModel) -> list[str]:
        """The parts of this configuration that read the teacher's logits in the student's label space.

        Non-empty means teacher and student must share their classes; the engine checks it before any
        training. Default: the whole loss when `uses_teacher_logits` is set. Methods whose options decide
        it (a KD term, confidence weights) override this.
        """
        return ["its loss"] if cls.uses_teacher_logits else []

    def attack_objective(self, ctx: StepContext) -> Objective | None:
        """The per-sample objective the training attack maximises, or None when training is clean."""
        return None

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        """Named, already weighted scalar loss terms; the engine minimises their sum."""
        raise NotImplementedError


class StepContext:
    """Lazily computed, cached views of one training batch.

    ``x: (B, C, H, W)`` float in [0, 1], ``y: (B,)``, ``index: (B,)`` (position in the training set).
    Each view is computed at most once per batch, on first use: `student_clean`, `student_adv`
    (with autograd, student in train mode), `teacher_clean`, `teacher_adv` (no autograd) and
    `x_adv` (runs the training attack with the method's objective).
    """

    def __init__(
        self,
        *,
        x: Tensor,
        y: Tensor,
        index: Tensor,
        student: Network,
        method: Method,
        teacher: Network | None = None,
        attack: Attack | None = None,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
        epoch: int = 0,
        step: int = 0,
    ):
        self.x, self.y, self.index = x, y, index
        self.student, self.teacher, self.method, self.attack = student, teacher, method, attack
        self.autocast = autocast
        self.epoch, self.step = epoch, step
        self._cache: dict[str, Any] = {}

    def computed(self, key: str) -> Any:
        """A view already computed this step (``"student_clean"``, ``"x_adv"``, ...), else None."""
        return self._cache.get(key)

    def _cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _student(self, x: Tensor) -> ModelOutput:
        with self.autocast():
            return self.student.forward_all(x)

    def _teacher(self, x: Tensor) -> ModelOutput:
        if self.teacher is None:
            raise RuntimeError(f"method {type(self.method).__name__} asked for the teacher, but none was built")
        with torch.no_grad(), self.autocast():
            return self.teacher.forward_all(x)

    @property
    def student_clean(self) -> ModelOutput:
        """Student on x, with autograd."""
        return self._cached("student_clean", lambda: self._student(self.x))

    @property
    def student_adv(self) -> ModelOutput:
        """Student on x', with autograd."""
        return self._cached("student_adv", lambda: self._student(self.x_adv))

    @property
    def teacher_clean(self) -> ModelOutput:
        """Teacher on x, no autograd."""
        return self._cached("teacher_clean", lambda: self._teacher(self.x))

    @property
    def teacher_adv(self) -> ModelOutput:
        """Teacher on x', no autograd."""
        return self._cached("teacher_adv", lambda: self._teacher(self.x_adv))

    @property
    def x_adv(self) -> Tensor:
        """x' from the training attack, maximising the method's objective against the student."""
        return self._cached("x_adv", self._run_attack)

    def _run_attack(self) -> Tensor:
        student = self.student
        was_training = student.training
        student.train(self.method.attack_bn_mode == "train")
        try:
            # Built in the attack's BatchNorm mode, so targets computed from the student (TRADES) match it.
            objective = self.method.attack_objective(self)
            if objective is None or self.attack is None:
                raise RuntimeError(
                    f"method {type(self.method).__name__} asked for adversarial inputs but "
                    + ("defines no attack objective" if objective is None else "the recipe builds no attack")
                )

            def model(z: Tensor) -> ModelOutput:
                with self.autocast():
                    return student.forward_all(z)

            return self.attack.perturb(model, self.x, objective)
        finally:
            student.train(was_training)
