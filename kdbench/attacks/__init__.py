"""Attacks: the interface (built-in attacks are registered through entry points)."""

from kdbench.attacks.base import Attack, ModelFn, Objective

__all__ = ["Attack", "ModelFn", "Objective"]
