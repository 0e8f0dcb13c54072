"""How a run measures a network: the evaluation suite on its test examples, and the held-out check.

`evaluate_network` is the one place that chooses the examples a run is evaluated on (``eval.*`` and the
fixed per-class selection of `kdbench.build.build_data`) and runs the suite (`kdbench.evaluation.evaluate`):
for the student, its best-on-validation weights and the teacher alike, so their numbers compare. `validator`
is the cheap robust check on the held-out training images (``data.val_size``) that the trainer calls to
select a checkpoint; it never touches the test set.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from kdbench.build import DataBundle
from kdbench.engine.distributed import Distributed
from kdbench.engine.progress import Progress
from kdbench.evaluation.progress_store import EvalProgressStore
from kdbench.models.base import Network
from kdbench.recipe import ResolvedRecipe

__all__ = ["evaluate_network", "validator"]


def evaluate_network(
    net: Network,
    data: DataBundle,
    resolved: ResolvedRecipe,
    device: torch.device,
    progress: Progress,
    seed: int | None = None,
    world: Distributed | None = None,
    store: EvalProgressStore | None = None,
) -> dict[str, Any]:
    """The evaluation suite on the run's evaluation examples: the one place that chooses them, used for the
    student, its best-on-validation weights and the teacher alike. ``world``: shared by the processes
    of a data-parallel run (each calls it); ``store``: resumable per chunk (docs/distributed.md)."""
    r = resolved.recipe
    from kdbench.evaluation import evaluate
    from kdbench.evaluation.record import evaluation_record, selection_flags

    main = world is None or world.is_main
    if main:
        progress.message(f"{r.name}: evaluating {', '.join(r.eval.attacks)} on {len(data.test_labels)} test images")
    net = net.to(memory_format=torch.contiguous_format)
    report = evaluate(
        net,
        data.test_images,
        data.test_labels,
        r.eval.attacks,
        eps=r.eval.eps,
        norm=r.eval.norm,
        batch_size=r.eval.batch_size,
        device=device,
        seed=r.seed if seed is None else seed,
        step_size=r.eval.step_size,
        on_progress=progress.message,
        chunk_size=r.eval.chunk_size,
        world=world,
        store=store,
    )
    report.flags += selection_flags(data.selection)
    for flag in report.flags if main else []:
        print(f"kdbench: flag: {flag}", file=sys.stderr)
    record = evaluation_record(report, data.selection, r.eval.step_size)
    return {"metrics": report.to_dict(), "flags": [str(f) for f in report.flags], "record": record}


def validator(
    data: DataBundle, resolved: ResolvedRecipe, device: torch.device
) -> Callable[[Network], dict[str, float]]:
    """The cheap robust check on the held-out training images (``train.val_attack``, PGD-10 by default):
    ``{"score": robust accuracy, "clean_acc", <attack>}``. Never touches the test set."""
    r = resolved.recipe
    from kdbench.evaluation import evaluate

    attack = r.train.val_attack
    images, labels = data.val_images, data.val_labels
    assert images is not None and labels is not None, "a validator needs data.val_size"

    def check(net: Network) -> dict[str, float]:
        net = net.to(memory_format=torch.contiguous_format)
        report = evaluate(
            net,
            images,
            labels,
            ["clean"] if attack == "clean" else ["clean", attack],
            eps=r.eval.eps,
            norm=r.eval.norm,
            batch_size=r.eval.batch_size,
            device=device,
            seed=r.seed,
            sanity=False,
        )
        metrics = report.to_dict()
        robust = metrics["clean_acc"] if attack == "clean" else metrics["robust"][attack]
        return {"score": float(robust), "clean_acc": float(metrics["clean_acc"]), attack: float(robust)}

    return check
