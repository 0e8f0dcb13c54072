"""METHODS.md's golden logits for IAD, AdaAD and MTARD, and direct float64 formulas to check them by.

Shared by the three plugins' tests; the formulas are plain Python, independent of kdbench.losses.
"""

from __future__ import annotations

import math

import torch

ZS_ADV = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]  # z_S(x')
ZS_CLEAN = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # z_S(x)
ZT_CLEAN = [[1.5, 0.0, -0.5], [0.0, 2.0, 0.0]]  # z_T(x)
ZT_ADV = [[1.0, 0.5, -0.5], [0.0, 1.0, 0.5]]  # z_T(x')
Y = [0, 1]


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    """``sum_c p_c log(p_c / q_c)``."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def kl_log_eps(p: list[float], q: list[float]) -> float:
    """RSLAD/MTARD's elementwise ``p (log(p + 1e-5) - log q)`` summed over classes."""
    return sum(a * (math.log(a + 1e-5) - math.log(b)) for a, b in zip(p, q, strict=True))


class View:
    def __init__(self, rows: list[list[float]], *, grad: bool = False):
        self.logits = torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


class GoldenCtx:
    """The step views the three methods read, on the golden logits (float64, as METHODS.md computed them)."""

    def __init__(self, epoch: int = 0, *, grad: bool = False, lr_scale: float = 1.0):
        self.student_adv, self.student_clean = View(ZS_ADV, grad=grad), View(ZS_CLEAN, grad=grad)
        self.teacher_clean, self.teacher_adv = View(ZT_CLEAN), View(ZT_ADV)
        self.y, self.epoch, self.lr_scale = torch.tensor(Y), epoch, lr_scale
        self.teachers: dict[str, object] = {}
