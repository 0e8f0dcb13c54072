"""CW-inf: PGD on the Carlini-Wagner margin, the "CW" column of robust-distillation tables.

Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017, optimise the
margin ``max_{j != y} z_j - z_y``; the TRADES / ARD / RSLAD evaluation code maximises it with L-inf PGD
(30 steps of 2/255 at eps 8/255 from a uniform start here; TRADES' own script uses 20). The caller
supplies the objective, normally `cw_margin` (re-exported here with `cw_margin_loss`), so this
class is PGD with CW-inf's defaults.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kdbench.attacks.objectives import cw_margin, cw_margin_loss
from kdbench.attacks.pgd import PGD
from kdbench.attacks.threat import ThreatModelConfig

__all__ = ["CWConfig", "CWLinf", "cw_margin", "cw_margin_loss"]


class CWConfig(ThreatModelConfig):
    """`ThreatModelConfig` with CW-inf's default of 30 steps (eps 8/255, alpha 2/255, uniform start)."""

    steps: int = Field(30, ge=0)


class CWLinf(PGD):
    """PGD-30 meant for the CW margin objective (`cw_margin`); any other objective works too."""

    Config: ClassVar[type[ThreatModelConfig]] = CWConfig
    config: CWConfig
