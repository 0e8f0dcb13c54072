"""A conformance suite every method runs, ours and third parties' alike.

Subclass `MethodConformance` in a test module, set ``method`` (the registered name) and optionally
``options`` (the method's config); pytest collects the inherited tests::

    from kdbench.testing import MethodConformance

    class TestMyMethod(MethodConformance):
        method = "my_method"

The tests use tiny networks on random tensors (CPU, a second or two): the loss is finite, gradients
reach the student and every trainable parameter of the method, the state_dict round-trips, a step is
deterministic for a fixed seed, and the training attack is the engine's: a method that attacks gets
x' only from the step context's attack (any other input the student sees during the loss fails the
test, so an attack loop inside ``loss`` cannot pass), and that x' moved from x and stays in its ball;
a method that does not attack shows the student nothing but x.

`tests/test_conformance.py` generates one such class per registered method from the registry (as
timm's tests iterate its model registry), so no installed method can skip the suite.

For a test that runs a method end to end, `tiny_recipe` writes the recipe to start from: fake data, a
ResNet-8, one epoch, clean accuracy (seconds on a CPU)::

    path.write_text(tiny_recipe("mine", method="my_method", teacher='[teacher]\nrecipe = "teacher.toml"'))
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdbench._registry import ATTACKS, METHODS
from kdbench.attacks.threat import ThreatModelConfig
from kdbench.config import EmptyConfig
from kdbench.method import Method, MethodSetup, StepContext, TeacherSetup
from kdbench.models.base import ModelOutput, Network, NetworkSpec, Normalize

__all__ = ["MethodConformance", "TinyNet", "conformance_suite", "make_context", "tiny_recipe"]

#: Widths of the tiny teachers: the main one, then each additional teacher (features 2x width).
TEACHER_WIDTH = 12
EXTRA_TEACHER_WIDTHS = (10, 14, 6)


class TinyNet(Network):
    """A 2-layer CNN for tests: ``(B, 3, H, W) -> (B, num_classes)`` with 16-dim features."""

    Config = EmptyConfig

    def __init__(self, spec: NetworkSpec, config: Any = None, variant: str | None = None, width: int = 8):
        super().__init__()
        self.num_classes = spec.num_classes
        self.feature_dim = 2 * width
        self.body = nn.Sequential(
            Normalize(spec.mean, spec.std),
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(self.feature_dim, spec.num_classes)

    def features(self, x: Tensor) -> Tensor:
        feats: Tensor = self.body(x)
        return feats


def make_context(
    method: Method,
    *,
    seed: int = 0,
    batch: int = 8,
    num_classes: int = 10,
    image_size: int = 16,
    dataset_size: int = 64,
    attack_options: dict[str, Any] | None = None,
    student: Network | None = None,
    teacher: Network | None = None,
    teachers: dict[str, Network] | None = None,
    epoch: int = 0,
    lr_scale: float = 1.0,
) -> StepContext:
    """A StepContext over random images with tiny networks (teachers frozen, attack = 2-step PGD).

    The additional teachers of ``method.extra_teachers`` are built too (frozen tiny networks of their
    own widths) unless ``teachers`` gives them.
    """
    gen = torch.Generator().manual_seed(seed)
    spec = NetworkSpec(num_classes, image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.rand(batch, 3, image_size, image_size, generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    index = torch.randperm(dataset_size, generator=gen)[:batch]
    if student is None:
        torch.manual_seed(seed)
        student = TinyNet(spec)
    if teacher is None and method.needs_teacher:
        torch.manual_seed(seed + 1)
        teacher = TinyNet(spec, width=TEACHER_WIDTH).eval().requires_grad_(False)
    if teachers is None:
        teachers = {}
        for i, name in enumerate(type(method).extra_teachers):
            torch.manual_seed(seed + 2 + i)
            width = EXTRA_TEACHER_WIDTHS[i % len(EXTRA_TEACHER_WIDTHS)]
            teachers[name] = TinyNet(spec, width=width).eval().requires_grad_(False)
    attack = None
    if "pgd" in ATTACKS:
        pgd = ATTACKS.get("pgd")
        options = {**method.attack_defaults, "steps": 2, **(attack_options or {})}
        attack = pgd(pgd.Config.model_validate(options))
    return StepContext(
        x=x,
        y=y,
        index=index,
        student=student,
        teacher=teacher,
        teachers=teachers,
        method=method,
        attack=attack,
        epoch=epoch,
        lr_scale=lr_scale,
    )


class MethodConformance:
    """Inherited tests for a registered method (pytest collects them from subclasses named Test*)."""

    method: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    num_classes: ClassVar[int] = 10
    dataset_size: ClassVar[int] = 64
    #: The epoch the step context reports (e.g. past a method's warm-up, to exercise all its terms).
    epoch: ClassVar[int] = 0

    # helpers --------------------------------------------------------------------------------------

    def build(self, seed: int = 0) -> Method:
        cls = METHODS.get(self.method)
        config = cls.Config.model_validate(self.options)
        setup = MethodSetup(
            num_classes=self.num_classes,
            student_feature_dim=16,
            teacher_feature_dim=24 if cls.needs_teacher else None,
            teacher_num_classes=self.num_classes if cls.needs_teacher else None,
            dataset_size=self.dataset_size,
            device=torch.device("cpu"),
            teachers={
                name: TeacherSetup(2 * EXTRA_TEACHER_WIDTHS[i % len(EXTRA_TEACHER_WIDTHS)], self.num_classes)
                for i, name in enumerate(cls.extra_teachers)
            },
        )
        torch.manual_seed(seed)
        return cls(config, setup)

    def context(self, method: Method, seed: int = 0) -> StepContext:
        return make_context(
            method, seed=seed, num_classes=self.num_classes, dataset_size=self.dataset_size, epoch=self.epoch
        )

    def step_loss(self, seed: int = 0) -> tuple[dict[str, Tensor], Method, StepContext]:
        method = self.build(seed)
        ctx = self.context(method, seed)
        torch.manual_seed(seed)
        return method.loss(ctx), method, ctx

    # the suite -------------------------------------------------------------------------------------

    def test_config_defaults_validate(self) -> None:
        cls = METHODS.get(self.method)
        cls.Config.model_validate({})  # every option has a default

    def test_loss_terms_are_named_finite_scalars(self) -> None:
        terms, _, _ = self.step_loss()
        assert terms, "a method must return at least one loss term"
        for name, value in terms.items():
            assert isinstance(name, str)
            assert name
            assert value.dim() == 0, f"term {name!r} is not a scalar"
            assert torch.isfinite(value), f"term {name!r} is not finite"

    def test_gradients_reach_student_and_method(self) -> None:
        terms, method, ctx = self.step_loss()
        total = torch.stack([t.float() for t in terms.values()]).sum()
        total.backward()
        grads = [p.grad for p in ctx.student.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the student"
        for name, p in method.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"method parameter {name} got no gradient"
                assert torch.isfinite(p.grad).all(), f"method parameter {name} got a non-finite gradient"
        if ctx.teacher is not None:
            assert all(p.grad is None for p in ctx.teacher.parameters()), "the teacher must stay frozen"

    def test_state_dict_round_trip(self) -> None:
        _terms, method, _ = self.step_loss()
        state = copy.deepcopy(method.state_dict())
        fresh = self.build(seed=123)
        fresh.load_state_dict(state)
        for key, value in fresh.state_dict().items():
            assert torch.equal(value, state[key]), f"state {key} did not round-trip"

    def test_deterministic_for_a_seed(self) -> None:
        first, _, _ = self.step_loss(seed=7)
        second, _, _ = self.step_loss(seed=7)
        assert first.keys() == second.keys()
        for name in first:
            assert torch.equal(first[name], second[name]), f"term {name} differs between identical runs"

    def test_training_attack_is_the_engines_and_stays_in_ball(self) -> None:
        method = self.build()
        ctx = self.context(method)
        assert ctx.attack is not None, "the conformance suite needs the pgd attack registered"
        outside: list[Tensor] = []
        produced: list[Tensor] = []
        with _recording(ctx, outside, produced):
            torch.manual_seed(0)
            method.loss(ctx)
        x_adv = ctx.computed("x_adv")
        if x_adv is None:  # trains on clean inputs: the student may see x only
            for z in outside:
                assert torch.equal(z, ctx.x), (
                    f"method {self.method} showed the student an input other than x without asking the step "
                    "context for x_adv: an attack must come from attack_objective and ctx.x_adv"
                )
            return
        assert len(produced) == 1 and produced[0] is x_adv, "x_adv must come from the step context's attack, once"
        for z in outside:
            assert torch.equal(z, ctx.x) or torch.equal(z, x_adv), (
                f"method {self.method} ran the student on an input that is neither x nor the engine's x' "
                "(an attack loop inside loss?)"
            )
        config = ctx.attack.config if ctx.attack is not None else None
        assert isinstance(config, ThreatModelConfig), "the conformance context attacks with kdbench's PGD"
        eps = config.eps
        delta = (x_adv - ctx.x).abs().max().item()
        assert delta > 0, "the training attack did not move x"
        assert delta <= eps + 1e-6
        assert x_adv.min() >= 0
        assert x_adv.max() <= 1


@contextmanager
def _recording(ctx: StepContext, outside: list[Tensor], produced: list[Tensor]) -> Iterator[None]:
    """Record the student's inputs outside the attack, and the attack's results, during a step."""
    attack = ctx.attack
    assert attack is not None
    student_forward, perturb = ctx.student.forward_all, attack.perturb
    inside = [False]

    def forward_all(z: Tensor) -> ModelOutput:
        if not inside[0]:
            outside.append(z.detach().clone())
        return student_forward(z)

    def recording_perturb(model: Any, x: Tensor, objective: Any) -> Tensor:
        inside[0] = True
        try:
            result = perturb(model, x, objective)
        finally:
            inside[0] = False
        produced.append(result)
        return result

    ctx.student.forward_all = forward_all  # type: ignore[method-assign,assignment]
    attack.perturb = recording_perturb  # type: ignore[method-assign]
    try:
        yield
    finally:
        del ctx.student.forward_all
        del attack.perturb


def conformance_suite(name: str, **attributes: Any) -> type[MethodConformance]:
    """A `MethodConformance` subclass for the registered method ``name`` (pytest collects it as Test*)."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in name)
    return type(f"TestConformance_{safe}", (MethodConformance,), {"method": name, **attributes})


# ------------------------------------------------------------------------------------ a tiny run


def tiny_recipe(
    name: str = "tiny",
    *,
    method: str = "natural",
    seed: int | None = 0,
    train_size: int = 64,
    test_size: int = 32,
    image_size: int = 16,
    data_options: str = "",
    teacher: str = "",
    student: str = "resnet8",
    student_extra: str = "",
    method_extra: str = "",
    attack: str = "",
    epochs: int = 1,
    batch_size: int = 32,
    train_extra: str = "",
    attacks: Sequence[str] = ("clean",),
    eval_extra: str = "",
) -> str:
    """The TOML text of a runnable recipe on ``fake`` data (a ResNet-8, one epoch, clean accuracy).

    Keyword arguments change one part; the ``*_extra`` ones add lines (one key per line) to a table.
    ``teacher``: its table(s), e.g. ``'[teacher]\\nrecipe = "t.toml"'``; ``attack``: the ``[attack]``
    table's lines (the table is written only when given); ``data_options``: more fake-data options, e.g.
    ``"num_classes = 5"``. The text keeps the shape tests edit with ``str.replace`` (``epochs = 1``,
    ``name = "natural"``).
    """
    options = f"train_size = {train_size}, test_size = {test_size}, image_size = {image_size}"
    if data_options:
        options += f", {data_options}"
    listed = ", ".join(f'"{a}"' for a in attacks)
    parts = [
        f'name = "{name}"',
        f"seed = {seed}" if seed is not None else "",
        "[data]",
        'dataset = "fake"',
        f"options = {{{options}}}",
        teacher,
        "[student]",
        f'model = "{student}"',
        student_extra,
        "[method]",
        f'name = "{method}"',
        method_extra,
        f"[attack]\n{attack}" if attack else "",
        "[train]",
        f"epochs = {epochs}",
        f"batch_size = {batch_size}",
        train_extra,
        "[eval]",
        f"attacks = [{listed}]",
        eval_extra,
    ]
    return "\n".join(part.strip("\n") for part in parts if part) + "\n"
