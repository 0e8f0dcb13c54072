"""The report of an evaluation, assembled from per-sample outcomes: exact accuracies, the worst case, settings.

Robust accuracy follows RobustBench / AutoAttack (Croce & Hein 2020): a sample counts as robust to an
attack when the model classifies it correctly on x *and* on the attack's x' (the per-sample outcomes
`build_report` receives are already ANDed with clean correctness). ``worst`` is the accuracy of the
per-sample AND over clean and every attack run: the worst case per sample, the number to report.

Accuracies are exact: ``correct / n`` from integer counts (`EvalReport.counts`), rounded once to a
double (147/500 is stored as 0.294, never as a float32 artefact). The comparisons of the accuracies on
the same samples (robust <= clean, AutoAttack not above PGD-20, CW and AutoAttack not below PGD-20
beyond noise, multi-step not above FGSM; `kdbench.evaluation.sanity`) cost nothing and run here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kdbench.attacks.threat import Norm
from kdbench.evaluation.attack_setup import attack_settings
from kdbench.evaluation.sanity import (
    Flag,
    check_autoattack_vs_pgd,
    check_below_reference,
    check_gradient_masking,
    check_robust_le_clean,
)

__all__ = ["CHUNK_SEED_RULE", "ROBUST_KEYS", "EvalReport", "build_report"]

#: Keys of `EvalReport.robust` that are always present (None when not run): result.json's contract.
ROBUST_KEYS = ("fgsm", "pgd20", "cw", "autoattack")
#: How a chunked evaluation seeds chunk k (`kdbench.evaluation.sharding.chunk_seed`), as result.json states it.
CHUNK_SEED_RULE = "seed + 1000003 * chunk"


@dataclass
class EvalReport:
    """Accuracies (fractions in [0, 1]) of one evaluation.

    ``robust`` always holds `ROBUST_KEYS` (None when not run) plus any extra ``pgd<k>`` run;
    ``correct`` holds the per-sample robust correctness ``(N,)`` bool (CPU) of ``"clean"`` and of every
    attack run; ``seconds`` the wall time per attack (and ``steps_check`` when `evaluate` ran that check).
    """

    clean_acc: float
    robust: dict[str, float | None]
    worst: float
    n_eval: int
    flags: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    correct: dict[str, Tensor] = field(default_factory=dict, repr=False)
    counts: dict[str, int] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"clean_acc", "robust": {fgsm, pgd20, cw, autoattack, ..., "worst"}, "n_eval", "counts"}``
        (result.json's ``metrics``; ``counts``: correct samples per attack, ``clean`` and ``worst``, so every
        accuracy is ``counts[name] / n_eval``); the flags are kept apart, in `flags`."""
        return {
            "clean_acc": self.clean_acc,
            "robust": {**self.robust, "worst": self.worst},
            "n_eval": self.n_eval,
            "counts": dict(self.counts),
        }


def build_report(
    names: Sequence[str],
    correct: dict[str, Tensor],
    seconds: dict[str, float],
    flags: list[Flag],
    *,
    eps: float,
    norm: Norm,
    step_size: float | None,
    chunk_size: int,
    sanity: bool,
) -> EvalReport:
    """The `EvalReport` of ``correct`` (``"clean"`` and every attack run of ``names``: ``(N,)`` bool, robust
    and clean correct) with the ``flags`` raised so far, plus, with ``sanity``, the comparisons of the
    accuracies. A ``chunk_size > 0`` (a chunked evaluation) is recorded in each attack's settings, with the
    chunk seed rule, so one process can reproduce the numbers."""
    n = correct["clean"].shape[0]
    counts = {name: int(mask.sum()) for name, mask in correct.items()}
    counts["worst"] = int(torch.stack(list(correct.values())).all(dim=0).sum())

    def accuracy(name: str) -> float:
        return counts[name] / n  # exact integer ratio, rounded once to a double

    robust: dict[str, float | None] = dict.fromkeys(ROBUST_KEYS)
    robust.update({name: accuracy(name) for name in correct if name != "clean"})
    report = EvalReport(
        clean_acc=accuracy("clean"),
        robust=robust,
        worst=accuracy("worst"),
        n_eval=n,
        flags=list(flags),
        seconds=seconds,
        correct=correct,
        counts=counts,
        settings=attack_settings(names, eps=eps, norm=norm, step_size=step_size),
    )
    if chunk_size > 0:  # chunked (data-parallel or resumable): how to reproduce it in one process
        for record in report.settings.values():
            record.update({"chunk_size": chunk_size, "chunk_seed": CHUNK_SEED_RULE})
    if sanity:
        report.flags += check_robust_le_clean(report.clean_acc, robust)
        report.flags += check_autoattack_vs_pgd(robust)
        report.flags += check_gradient_masking(robust)
        report.flags += check_below_reference(correct)
    return report
