"""Evaluation throughput for ``kdbench bench``: how long PGD-20 and standard AutoAttack take per test image.

Speed only: the images are the split's first ``n`` and nothing is reported as a result (a reported
evaluation is ``kdbench eval`` / ``kdbench run``'s, on the recipe's fixed selection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kdbench._errors import UserError
from kdbench.build import build_source
from kdbench.data.cache import load_split_cached
from kdbench.engine.hardware import Hardware
from kdbench.models.base import Network
from kdbench.recipe import ResolvedRecipe

__all__ = ["evaluation_throughput"]


def evaluation_throughput(
    student: Network,
    resolved: ResolvedRecipe,
    hw: Hardware,
    n: int,
    autoattack: bool,
    say: Callable[[str], None],
    *,
    trained: bool = False,
) -> dict[str, Any]:
    """Throughput of PGD-20 and (optionally) standard AutoAttack on the first ``n`` test images.

    ``trained``: the student's weights were loaded (``--weights``), so the AutoAttack time is that of a
    real model, not the lower bound of a barely trained one.
    """
    from kdbench.evaluation import evaluate
    from kdbench.evaluation.autoattack import require_autoattack

    r = resolved.recipe
    test = load_split_cached(build_source(resolved), "test")
    n = min(n, len(test.labels))
    attacks = ["clean", "pgd20"]
    skipped = None
    if autoattack:
        try:
            require_autoattack()
            attacks.append("autoattack")
        except UserError as exc:
            skipped = str(exc)
    say(f"evaluation: {', '.join(attacks)} on {n} test images")
    net = student.to(memory_format=torch.contiguous_format)  # as kdbench.run evaluates
    result = evaluate(
        net,
        test.images[:n],
        test.labels[:n],
        attacks,
        eps=r.eval.eps,
        norm=r.eval.norm,
        batch_size=r.eval.batch_size,
        device=hw.device,
        seed=r.seed,
        sanity=False,
    )

    def block(name: str) -> dict[str, Any]:
        seconds = result.seconds[name]
        return {
            "seconds": seconds,
            "images_per_second": n / seconds if seconds > 0 else None,
            "seconds_per_10000": seconds * 10_000 / n,
            "accuracy": result.robust.get(name) if name != "clean" else result.clean_acc,
        }

    out: dict[str, Any] = {
        "n": n,
        "batch_size": r.eval.batch_size,
        "model": "student",
        "clean_acc": result.clean_acc,
        "clean": block("clean"),
        "pgd20": block("pgd20"),
        "autoattack": block("autoattack") if "autoattack" in attacks else None,
        "note": "AutoAttack attacks only points classified correctly and stops on a point once it is broken, "
        "so its time grows with the model's clean and robust accuracy; "
        + (
            "the evaluated weights were loaded with --weights"
            if trained
            else "the benchmarked student is barely trained, which makes this a lower bound"
        ),
    }
    if skipped is not None:
        out["autoattack_skipped"] = skipped
    return out
