"""Attacks: the interface and the per-sample objectives (built-in attacks are registered through entry points)."""

from kdbench.attacks import objectives
from kdbench.attacks.base import Attack, ModelFn, Objective

__all__ = ["Attack", "ModelFn", "Objective", "objectives"]
