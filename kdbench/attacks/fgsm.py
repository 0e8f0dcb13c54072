"""The fast gradient sign method: one L-inf step of size eps.

Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015::

    x' = clip_[0,1](x + eps * sign(grad_x L(f(x))))

Implemented as PGD with one step of size eps (`kdbench.attacks.pgd.pgd`), so the gradient, fp32 and
projection guarantees are PGD's. With ``random_start = "uniform"`` it is the FGSM from a random start
of Wong et al. 2020 (with their step 1.25 * eps it would leave the ball; here the step is eps and the
result is projected).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from torch import Tensor

from kdbench.attacks.base import Attack, ModelFn, Objective
from kdbench.attacks.pgd import pgd
from kdbench.attacks.threat import RandomStart, check_eps
from kdbench.config import Number, StrictModel

__all__ = ["FGSM", "FGSMConfig"]


class FGSMConfig(StrictModel):
    """FGSM options: the L-inf budget (default 8/255) and the start (default none: the classic FGSM)."""

    norm: Literal["linf"] = "linf"
    eps: Number = Field(8 / 255, ge=0)
    random_start: RandomStart = "none"

    @model_validator(mode="after")
    def _eps_fits_norm(self) -> FGSMConfig:
        check_eps(self.norm, self.eps)
        return self


class FGSM(Attack[FGSMConfig]):
    """One signed-gradient step of size eps (Goodfellow et al. 2015)."""

    Config: ClassVar[type[FGSMConfig]] = FGSMConfig

    def __init__(self, config: FGSMConfig | None = None):
        super().__init__(config if config is not None else self.Config())

    def perturb(self, model: ModelFn, x: Tensor, objective: Objective) -> Tensor:
        """``clip_[0,1](x + eps * sign(grad))`` (from the configured start), detached, x's dtype."""
        c = self.config
        return pgd(model, x, objective, norm=c.norm, eps=c.eps, step_size=c.eps, steps=1, random_start=c.random_start)
