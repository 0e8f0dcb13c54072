"""Robustness evaluation: clean, FGSM, PGD-k, CW-inf and AutoAttack accuracy, with sanity checks."""

from kdbench.evaluation.suite import (
    ATTACK_NAMES,
    ROBUST_KEYS,
    EvalReport,
    check_attack_names,
    evaluate,
    parse_attacks,
)

__all__ = ["ATTACK_NAMES", "ROBUST_KEYS", "EvalReport", "check_attack_names", "evaluate", "parse_attacks"]
