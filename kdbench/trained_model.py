"""The trained student's weights files: model.pt, and the best-on-validation weights (model_best_val.pt).

`model_payload` is model.pt's content (format 1): the weights with what rebuilds the network (model name,
its options, the class count, the input normalisation), loadable with ``torch.load(weights_only=True)``.
With ``data.val_size`` the trainer keeps the weights that scored best on the held-out training images;
`best_on_validation` writes them beside model.pt and evaluates them on the test set with the full suite
(result.json ``validation``, ``metrics_best_val``). The selection itself used only the held-out images.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from typing import Any

import torch

from kdbench.build import DataBundle
from kdbench.engine.progress import Progress
from kdbench.models.base import Network, NetworkSpec
from kdbench.models.normalization import Normalization
from kdbench.recipe import ResolvedRecipe
from kdbench.run_folder import RunFolder

__all__ = ["best_on_validation", "model_payload"]


def model_payload(
    net: Network,
    resolved: ResolvedRecipe,
    num_classes: int,
    normalization: Normalization,
    state: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """model.pt's bytes: the trained weights with what is needed to rebuild the network (safe to load
    weights_only), including the input normalisation it was trained with."""
    weights = state if state is not None else net.state_dict()
    payload = {
        "format": 1,
        "model": resolved.recipe.student.model,
        "options": resolved.student_config.model_dump(mode="json"),
        "num_classes": num_classes,
        "normalize": normalization.model_dump(mode="json"),
        "recipe_hash": resolved.hash,
        **(extra or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def best_on_validation(
    best: dict[str, Any] | None,
    student: Network,
    data: DataBundle,
    resolved: ResolvedRecipe,
    progress: Progress,
    folder: RunFolder,
    spec: NetworkSpec,
    normalization: Normalization,
    evaluate: Callable[[Network], dict[str, Any]],
) -> dict[str, Any]:
    """With data.val_size: the best-on-validation weights (``best``: `Trainer.best`), saved as
    model_best_val.pt and measured by ``evaluate`` (the run's suite on the test set); returns result.json's
    ``validation``, ``metrics_best_val`` and ``flags_best_val`` (empty without a held-out split). ``student``
    holds its final weights again on return."""
    r = resolved.recipe
    if data.val_images is None or best is None:
        return {}
    assert data.val_indices is not None and data.val_labels is not None  # set with val_images
    indices = data.val_indices.to(torch.int64).contiguous().numpy().tobytes()
    record: dict[str, Any] = {
        "size": len(data.val_labels),
        "seed": r.seed,
        "stratified": True,
        "indices_sha256": hashlib.sha256(indices).hexdigest(),
        "attack": r.train.val_attack,
        "every": r.train.val_every,
        "best_epoch": int(best["epoch"]),
        "best_score": float(best["score"]),
        "best_metrics": best["metrics"],
        "ranked": "final",
    }
    if best["epoch"] == r.train.epochs:  # the final model is the best one: nothing more to evaluate
        record["best_is_final"] = True
        return {"validation": record, "metrics_best_val": None}
    final_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.load_state_dict(best["student"])
    folder.write_model(
        model_payload(student, resolved, spec.num_classes, normalization, extra={"epoch": best["epoch"]}),
        best_val=True,
    )
    tic = time.perf_counter()
    progress.message(f"{r.name}: best-on-validation model (epoch {best['epoch']}) on the test set")
    report = evaluate(student)
    record["test_eval_seconds"] = round(time.perf_counter() - tic, 3)
    record["best_is_final"] = False
    student.load_state_dict(final_state)
    return {"validation": record, "metrics_best_val": report["metrics"], "flags_best_val": report["flags"]}
