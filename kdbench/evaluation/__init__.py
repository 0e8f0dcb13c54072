"""Robustness evaluation: clean, FGSM, PGD-k, CW-inf and AutoAttack accuracy, with sanity checks."""

from kdbench.evaluation.attack_setup import ATTACK_NAMES, check_attack_names, parse_attacks
from kdbench.evaluation.report import ROBUST_KEYS, EvalReport
from kdbench.evaluation.suite import evaluate

__all__ = ["ATTACK_NAMES", "ROBUST_KEYS", "EvalReport", "check_attack_names", "evaluate", "parse_attacks"]
