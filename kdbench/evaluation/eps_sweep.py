"""The eps sweep of ``kdbench eval --eps-sweep``: PGD-20 accuracy against the budget, its plot, and the check
that the curve ends near zero (Carlini et al. 2019, "On Evaluating Adversarial Robustness": accuracy
must reach 0 as eps grows, else gradient masking or an attack that cannot reach large perturbations)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from torch import Tensor

from kdbench._errors import UserError
from kdbench.engine.checkpoint import atomic_write_bytes
from kdbench.evaluation.sanity import Flag
from kdbench.results import eps_label

#: ``--eps-sweep`` without a list: the L-inf budgets of the usual CIFAR robustness curves, continued to
#: 64/255 where every honest model is near 0 (Carlini et al. 2019: the curve must reach 0).
DEFAULT_SWEEP = "0,1/255,2/255,4/255,8/255,12/255,16/255,32/255,64/255"
#: ``--eps-sweep`` without a list under ``--norm l2``.
DEFAULT_SWEEP_L2 = "0,0.125,0.25,0.5,0.75,1.0,2.0,4.0"
#: A sweep whose largest eps is at least this multiple of the run's eps must end near 0 accuracy.
SWEEP_ZERO_FACTOR = 4
#: "Near 0" at the end of such a sweep: at most this accuracy (plus noise).
SWEEP_ZERO_TOLERANCE = 0.05
#: The attack of an eps sweep.
SWEEP_ATTACK = "pgd20"


def plot_eps_sweep(points: list[dict[str, Any]], path: Path, *, title: str, norm: str) -> None:
    """Draw robust accuracy against eps (matplotlib's Agg backend, no display needed) into a PNG file.

    ``points``: eval.json's ``eps_sweep`` entries ``{"eps", "eps_label", "pgd20"}``. Written atomically.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--eps-sweep draws its plot with matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    linf = norm == "linf"
    xs = [p["eps"] * 255 if linf else p["eps"] for p in points]
    ax.plot(xs, [p[SWEEP_ATTACK] for p in points], marker="o", label="PGD-20")
    ax.set_xlabel("eps (x/255, L-inf)" if linf else "eps (L2)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:.3g}" for x in xs])
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def check_sweep_reaches_zero(correct_by_eps: dict[float, Tensor], eps: float) -> list[Flag]:
    """A sweep that reaches `SWEEP_ZERO_FACTOR` x the evaluation eps must end near 0 robust accuracy.

    Near 0: at most `SWEEP_ZERO_TOLERANCE` plus two binomial standard errors ``2 sqrt(p (1 - p) / n)``
    at that tolerance. A curve that flattens above it means the attack cannot reach the boundary of
    large balls: gradient masking, or too small a step (serious).
    """
    if not correct_by_eps:
        return []
    largest = max(correct_by_eps)
    if eps <= 0 or largest < SWEEP_ZERO_FACTOR * eps:
        return []
    correct = correct_by_eps[largest]
    n = max(correct.numel(), 1)
    acc = int(correct.sum()) / n
    p = SWEEP_ZERO_TOLERANCE
    allowed = p + 2 * (p * (1 - p) / n) ** 0.5
    if acc <= allowed:
        return []
    return [
        Flag(
            f"eps sweep does not reach ~0: PGD-20 accuracy {acc:.4f} at eps {eps_label(largest)} "
            f"(> {allowed:.4f}): gradient masking or an attack that cannot reach large perturbations",
            check="eps_sweep_zero",
            values={"eps": largest, "accuracy": acc, "allowed": allowed},
        )
    ]


def _sweep_plot_path(out: Path) -> Path:
    """``eps_sweep.png`` beside eval.json; ``<stem>.eps_sweep.png`` for any other --out name."""
    return out.with_name("eps_sweep.png") if out.name == "eval.json" else out.with_name(f"{out.stem}.eps_sweep.png")
