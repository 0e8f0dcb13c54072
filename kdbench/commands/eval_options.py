"""Parsing the values of ``kdbench eval``'s options: budgets (``8/255``), attack and eps lists, the device."""

from __future__ import annotations

import torch

from kdbench._errors import UserError
from kdbench.attacks.threat import check_eps
from kdbench.config import parse_number
from kdbench.evaluation.attack_setup import parse_attacks
from kdbench.evaluation.eps_sweep import (
    DEFAULT_SWEEP,
    DEFAULT_SWEEP_L2,
)

#: The default budget per norm when neither ``--eps`` nor the run gives one.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
_SWEEP_DEFAULT = "default"


# ------------------------------------------------------------------------------------ parsing


def parse_eps(text: str | float, *, what: str = "--eps") -> float:
    """``"8/255"``, ``"0.03"`` or a number -> float; anything else is a `UserError`."""
    value = parse_number(text)
    try:
        eps = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what}: {text!r} is not a number (write e.g. 8/255 or 0.5)") from None
    if eps != eps or eps in (float("inf"), float("-inf")):
        raise UserError(f"{what}: {text!r} is not a finite number")
    return eps


def _checked_eps(eps: float, norm: str, what: str) -> float:
    try:
        check_eps(norm, eps)
    except ValueError as err:
        raise UserError(f"{what}: {err}") from None
    return eps


def _attack_list(values: list[str] | None, default: list[str] | tuple[str, ...]) -> list[str]:
    if not values:
        return parse_attacks(list(default))
    names = [part for value in values for part in value.split(",") if part.strip()]
    if not names:
        raise UserError("--attacks: no attack named")
    return parse_attacks(names)


def _sweep_list(text: str, norm: str) -> list[float]:
    if text == _SWEEP_DEFAULT:
        text = DEFAULT_SWEEP if norm == "linf" else DEFAULT_SWEEP_L2
    parts = [part for part in text.replace(" ", ",").split(",") if part]
    if not parts:
        raise UserError("--eps-sweep: empty list (write e.g. 0,2/255,4/255,8/255)")
    values = {_checked_eps(parse_eps(part, what="--eps-sweep"), norm, "--eps-sweep") for part in parts}
    return sorted(values)


def _device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device auto or cpu")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


# ------------------------------------------------------------------------------------ the target
