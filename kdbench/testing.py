"""A conformance suite every method runs, ours and third parties' alike.

Subclass `MethodConformance` in a test module, set ``method`` (the registered name) and optionally
``options`` (the method's config); pytest collects the inherited tests::

    from kdbench.testing import MethodConformance

    class TestMyMethod(MethodConformance):
        method = "my_method"

The tests use tiny networks on random tensors (CPU, a second or two): the loss is finite, gradients
reach the student and every trainable parameter of the method, the state_dict round-trips, a step is
deterministic for a fixed seed, and a training attack (if the method asks for one) stays in its ball.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdbench._registry import ATTACKS, METHODS
from kdbench.config import EmptyConfig
from kdbench.method import Method, MethodSetup, StepContext
from kdbench.models.base import Network, NetworkSpec, Normalize

__all__ = ["MethodConformance", "TinyNet", "make_context"]


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
        return self.body(x)


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
) -> StepContext:
    """A StepContext over random images with tiny networks (teacher frozen, attack = 2-step PGD)."""
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
        teacher = TinyNet(spec, width=12).eval().requires_grad_(False)
    attack = None
    if "pgd" in ATTACKS:
        pgd = ATTACKS.get("pgd")
        options = {**method.attack_defaults, "steps": 2, **(attack_options or {})}
        attack = pgd(pgd.Config.model_validate(options))
    return StepContext(x=x, y=y, index=index, student=student, teacher=teacher, method=method, attack=attack)


class MethodConformance:
    """Inherited tests for a registered method (pytest collects them from subclasses named Test*)."""

    method: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    num_classes: ClassVar[int] = 10
    dataset_size: ClassVar[int] = 64

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
        )
        torch.manual_seed(seed)
        return cls(config, setup)

    def context(self, method: Method, seed: int = 0) -> StepContext:
        return make_context(method, seed=seed, num_classes=self.num_classes, dataset_size=self.dataset_size)

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

    def test_training_attack_stays_in_ball(self) -> None:
        method = self.build()
        ctx = self.context(method)
        if method.attack_objective(ctx) is None or ctx.attack is None:
            return  # the method trains on clean inputs
        eps = ctx.attack.config.eps  # type: ignore[attr-defined]
        delta = (ctx.x_adv - ctx.x).abs().max().item()
        assert delta <= eps + 1e-6
        assert ctx.x_adv.min() >= 0
        assert ctx.x_adv.max() <= 1
