"""The method interface (a distillation loss) and the per-batch step context it reads from.

A method states formulas only: which objective the training attack maximises (or none) and the
named loss terms of one batch. The engine owns loops, data, optimisers, precision and checkpoints.
A method may own trainable modules (embedding heads) and state (memory banks, adaptive weights,
counters): it is an ``nn.Module``, so both join the optimiser and the checkpoint through
``parameters()`` and ``state_dict()``; state kept in buffers is saved every epoch (and on a signal
mid-epoch) and restored bit for bit on resume.

A method may read more than one teacher: besides the recipe's ``[teacher]``, the names it lists in
`Method.extra_teachers` are built from ``[teachers.<name>]`` tables, frozen, and offered in the step
context with their own cached views (``ctx.teachers[name].clean`` / ``.adv``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import torch
from torch import Tensor, nn

from kdbench._errors import PluginError
from kdbench.attacks.base import Attack, JointOutput, Objective
from kdbench.attacks.objectives import TeacherObjective
from kdbench.config import ConfigT, EmptyConfig, StrictModel
from kdbench.models.base import ModelOutput, Network

if TYPE_CHECKING:
    from kdbench.engine.distributed import Distributed

__all__ = ["MAIN_TEACHER", "Method", "MethodSetup", "ReentrantViewError", "StepContext", "TeacherSetup", "TeacherViews"]

#: A step-context view's type (`ModelOutput`, the x' tensor), for `StepContext._cached`.
_View = TypeVar("_View")

#: The name of the recipe's ``[teacher]`` in `StepContext.teachers` and `kdbench.attacks.objectives.with_teacher`.
MAIN_TEACHER = "teacher"


class ReentrantViewError(PluginError):
    """A method asked for a step-context view while that same view was being computed (e.g. x' inside its objective)."""


@dataclass(frozen=True)
class TeacherSetup:
    """Size of an additional teacher: its feature dimension and class count."""

    feature_dim: int
    num_classes: int


@dataclass(frozen=True)
class MethodSetup:
    """What a method may size itself by, known before training starts.

    ``teachers`` holds the additional teachers of `Method.extra_teachers`, by name (empty otherwise).
    """

    num_classes: int
    student_feature_dim: int
    teacher_feature_dim: int | None
    teacher_num_classes: int | None
    dataset_size: int
    device: torch.device
    teachers: Mapping[str, TeacherSetup] = field(default_factory=dict)


class Method(nn.Module, Generic[ConfigT]):
    """Base class of every registered method (distillation loss or teacher-training loss).

    Constructor: ``(config: Config, setup: MethodSetup)``. Required: `loss`. Optional:
    `attack_objective` (default: no attack) and the class attributes below. Subclass
    ``Method[MyConfig]`` (with ``Config = MyConfig``) to have ``self.config`` typed as ``MyConfig``.
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
    #: Additional teachers the method reads besides ``[teacher]``: name -> what it is for. A recipe
    #: gives each one as a ``[teachers.<name>]`` table (same keys as ``[teacher]``).
    extra_teachers: ClassVar[Mapping[str, str]] = {}
    #: False when the method keeps per-sample state (memory banks) that is not synchronised across
    #: torchrun processes; the engine then refuses data-parallel runs instead of training on stale rows.
    #: A method with such state that synchronises it in `enter_data_parallel` keeps True.
    supports_data_parallel: ClassVar[bool] = True
    #: Link to the method's paper (the leaderboard's "paper" column), e.g. "https://arxiv.org/abs/1503.02531".
    paper: ClassVar[str | None] = None

    def __init__(self, config: ConfigT, setup: MethodSetup):
        super().__init__()
        self.config: ConfigT = config
        self.setup = setup

    @classmethod
    def teacher_logit_readers(cls, config: StrictModel) -> list[str]:
        """The parts of this configuration that read the teacher's logits in the student's label space.

        Non-empty means teacher and student must share their classes (every teacher, the additional
        ones of `extra_teachers` included); the engine checks it before any training. Default: the
        whole loss when `uses_teacher_logits` is set. Methods whose options decide it (a KD term,
        confidence weights) override this.
        """
        return ["its loss"] if cls.uses_teacher_logits else []

    @classmethod
    def run_problems(cls, config: StrictModel, *, epochs: int) -> dict[str, str]:
        """Options that cannot work with this run's length: option name -> what is wrong (default: none).

        The recipe loader reports the first one as a one-line error at ``method.<option>`` (e.g. a
        warm-up epoch at or beyond ``train.epochs``, which would never be reached).
        """
        return {}

    def enter_data_parallel(self, world: Distributed, seed: int) -> None:
        """Optional: make this method's state follow the whole global batch of a data-parallel run.

        The engine calls it once per process, before training starts and before a checkpoint is
        loaded, when the run has more than one process (never in a single-process run, whose results
        it must not change). A method with per-sample state (memory banks) all-gathers through
        ``world`` what updates that state, and draws shared random numbers from a generator seeded by
        ``seed`` (identical on every process), so every process holds the state a single process
        would hold after the same global batches. Default: nothing (stateless losses need nothing:
        the engine averages the gradients).
        """
        del world, seed

    def attack_objective(self, ctx: StepContext) -> Objective | None:
        """The per-sample objective the training attack maximises, or None when training is clean.

        An objective built with `kdbench.attacks.objectives.with_teacher` also reads a teacher on x'
        (a teacher forward per attack iteration, autograd through the input only).
        """
        return None

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        """Named, already weighted scalar loss terms; the engine minimises their sum."""
        raise NotImplementedError


class TeacherViews:
    """The cached views of one teacher in a step: ``clean`` (on x) and ``adv`` (on x'), no autograd."""

    def __init__(self, ctx: StepContext, name: str, network: Network):
        self._ctx, self.name, self.network = ctx, name, network

    @property
    def clean(self) -> ModelOutput:
        """This teacher on x, no autograd."""
        return self._ctx._teacher_view(self.name, "clean")

    @property
    def adv(self) -> ModelOutput:
        """This teacher on x', no autograd."""
        return self._ctx._teacher_view(self.name, "adv")


class StepContext:
    """Lazily computed, cached views of one training batch.

    ``x: (B, C, H, W)`` float in [0, 1], ``y: (B,)``, ``index: (B,)`` (position in the training set).
    Each view is computed at most once per batch, on first use: `student_clean`, `student_adv`
    (with autograd, student in train mode), `teacher_clean`, `teacher_adv` (no autograd),
    ``teachers[name].clean`` / ``.adv`` for every teacher (the recipe's ``[teacher]`` is
    ``teachers["teacher"]``) and `x_adv` (runs the training attack with the method's objective).
    A view requested while it is being computed (``x_adv`` read inside `Method.attack_objective`)
    raises `ReentrantViewError` naming the method and the chain of views.
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
        teachers: Mapping[str, Network] | None = None,
        method_name: str | None = None,
        lr_scale: float = 1.0,
    ):
        self.x, self.y, self.index = x, y, index
        #: This step's learning rate over the peak ``train.lr`` (a Python float: reading it costs no sync).
        self.lr_scale = lr_scale
        self.student, self.teacher, self.method, self.attack = student, teacher, method, attack
        self.autocast = autocast
        self.epoch, self.step = epoch, step
        self.method_name = method_name or type(method).__name__
        networks = dict(teachers or {})
        if MAIN_TEACHER in networks:
            raise ValueError(f"{MAIN_TEACHER!r} names the recipe's [teacher]; give the additional teachers other names")
        if teacher is not None:
            networks = {MAIN_TEACHER: teacher, **networks}
        #: Every teacher's views, by name (``"teacher"``: the recipe's ``[teacher]``).
        self.teachers: Mapping[str, TeacherViews] = {n: TeacherViews(self, n, net) for n, net in networks.items()}
        self._cache: dict[str, Any] = {}
        self._computing: list[str] = []

    def computed(self, key: str) -> Any:
        """A view already computed this step (``"student_clean"``, ``"x_adv"``, ...), else None.

        Additional teachers' views are keyed ``"teacher_clean:<name>"`` and ``"teacher_adv:<name>"``.
        """
        return self._cache.get(key)

    def _cached(self, key: str, compute: Callable[[], _View]) -> _View:
        if key in self._cache:
            cached: _View = self._cache[key]  # stored by this method under this key, from the same compute
            return cached
        with self._computing_view(key):
            value = self._cache[key] = compute()
        return value

    @contextmanager
    def _computing_view(self, key: str) -> Iterator[None]:
        if key in self._computing:
            chain = " -> ".join([*self._computing[self._computing.index(key) :], key])
            raise ReentrantViewError(
                f"method {self.method_name!r} asked for the step view {key!r} while computing it ({chain}); "
                "inside attack_objective read the teacher on x' through kdbench.attacks.objectives.with_teacher "
                "and never ctx.x_adv, ctx.student_adv or ctx.teacher_adv"
            )
        self._computing.append(key)
        try:
            yield
        finally:
            self._computing.pop()

    def _student(self, x: Tensor) -> ModelOutput:
        with self.autocast():
            return self.student.forward_all(x)

    def _teacher_network(self, name: str) -> Network:
        if name not in self.teachers:
            known = ", ".join(self.teachers) or "none"
            raise RuntimeError(f"method {self.method_name!r} asked for teacher {name!r}, but the run built: {known}")
        return self.teachers[name].network

    def _teacher_view(self, name: str, which: Literal["clean", "adv"]) -> ModelOutput:
        key = f"teacher_{which}" if name == MAIN_TEACHER else f"teacher_{which}:{name}"
        network = self._teacher_network(name)

        def compute() -> ModelOutput:
            x = self.x if which == "clean" else self.x_adv
            with torch.no_grad(), self.autocast():
                return network.forward_all(x)

        return self._cached(key, compute)

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
        if self.teacher is None:
            raise RuntimeError(f"method {self.method_name!r} asked for the teacher, but none was built")
        return self._teacher_view(MAIN_TEACHER, "clean")

    @property
    def teacher_adv(self) -> ModelOutput:
        """Teacher on x', no autograd."""
        if self.teacher is None:
            raise RuntimeError(f"method {self.method_name!r} asked for the teacher, but none was built")
        return self._teacher_view(MAIN_TEACHER, "adv")

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
                    f"method {self.method_name!r} asked for adversarial inputs but "
                    + ("defines no attack objective" if objective is None else "the recipe builds no attack")
                )
            if isinstance(objective, TeacherObjective):
                return self.attack.perturb(self._joint_model(objective.teacher), self.x, objective)

            def model(z: Tensor) -> ModelOutput:
                with self.autocast():
                    return student.forward_all(z)

            return self.attack.perturb(model, self.x, objective)
        finally:
            student.train(was_training)

    def _joint_model(self, name: str) -> Callable[[Tensor], JointOutput]:
        """Student and teacher ``name`` on the same x', the teacher in eval mode with its parameters frozen.

        The attack differentiates with respect to x' only (``torch.autograd.grad``), so no parameter
        ``.grad`` is touched; the teacher's parameters are asserted not to require gradients.
        """
        teacher = self._teacher_network(name)
        if teacher.training or any(p.requires_grad for p in teacher.parameters()):
            raise RuntimeError(f"teacher {name!r} of method {self.method_name!r} is not frozen (eval mode, no grad)")
        student = self.student

        def model(z: Tensor) -> JointOutput:
            with self.autocast():
                return JointOutput(student.forward_all(z), teacher.forward_all(z))

        return model
