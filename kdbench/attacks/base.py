"""The attack interface: perturb a batch to maximise a per-sample objective within a threat model.

Attacks never compute parameter gradients: they differentiate the objective with respect to the
input only (``torch.autograd.grad``), and they keep the perturbation, its projection and clamping in
fp32 even when the model runs under bf16 autocast (bf16 spacing near 1 is 1/128, far coarser than
2/255 steps). Images stay in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, NamedTuple

from torch import Tensor

from kdbench.config import ConfigT, EmptyConfig, StrictModel
from kdbench.models.base import ModelOutput

__all__ = ["Attack", "JointOutput", "ModelFn", "Objective"]


class JointOutput(NamedTuple):
    """The student's and a frozen teacher's outputs on the same x', for objectives that read both."""

    student: ModelOutput
    teacher: ModelOutput


#: The model as the attack sees it: images ``(B, C, H, W)`` -> `ModelOutput` (or, when the method's
#: objective reads a teacher on x', a `JointOutput`). Attacks pass it to the objective unchanged.
ModelFn = Callable[[Tensor], Any]
#: A per-sample objective to maximise: the model's output on x' -> ``(B,)``.
Objective = Callable[[Any], Tensor]


class Attack(Generic[ConfigT]):
    """Base class of every registered attack. Constructor: ``(config: Config)``.

    Subclass ``Attack[MyConfig]`` (with ``Config = MyConfig``) to have ``self.config`` typed as ``MyConfig``.
    """

    Config: ClassVar[type[StrictModel]] = EmptyConfig

    def __init__(self, config: ConfigT):
        self.config: ConfigT = config

    def perturb(self, model: ModelFn, x: Tensor, objective: Objective) -> Tensor:
        """Return x' (same shape and dtype as ``x``, inside the threat model) maximising ``objective``.

        ``x`` is detached; ``x'`` is returned detached.
        """
        raise NotImplementedError
