"""What the leaderboard reads from one result: its accuracies, the device it trained on, its serious flags.

The accuracies are those of the final model, or with ``select="best_val"`` of the best-on-validation
model (result.json's ``metrics_best_val``, selected on held-out training images). A ``serious`` flag
(result.json's ``flag_details``, `kdbench.evaluation.sanity.Flag`) and an evaluation set that misses
classes of the dataset mark a run unreliable, as RobustBench marks entries whose evaluation was broken.
"""

from __future__ import annotations

from kdbench.results import Metrics, Result

__all__ = [
    "ANALYSIS_KEYS",
    "METRICS",
    "METRIC_LABELS",
    "SELECTIONS",
    "coverage_flag",
    "metric_values",
    "run_metrics",
    "selected_metrics",
    "serious_flags",
    "train_device",
]

#: Accuracies shown, in column order (``clean`` is ``metrics.clean_acc``, the rest ``metrics.robust``).
METRICS = ("clean", "fgsm", "pgd20", "cw", "autoattack", "worst")
METRIC_LABELS = {
    "clean": "Clean",
    "fgsm": "FGSM",
    "pgd20": "PGD-20",
    "cw": "CW",
    "autoattack": "AutoAttack",
    "worst": "worst",
}
#: Numbers `kdbench analyze` writes under result.json's "analysis", with their column headers.
ANALYSIS_KEYS = {
    "cka_clean": "CKA",
    "cka_adv": "CKA adv",
    "class_corr_distance": "corr. dist.",
    "feature_change": "feat. change",
}
#: Which model of a run the leaderboard ranks (`kdbench.leaderboard.group.build_boards`'s ``select``).
SELECTIONS = ("final", "best_val")


def selected_metrics(result: Result, select: str = "final") -> Metrics:
    """result.json's ``metrics`` of the final model, or with ``select="best_val"`` of the best-on-validation
    model (``metrics_best_val``; the final one's when it was the best, or without data.val_size)."""
    if select == "best_val" and result.metrics_best_val is not None:
        return result.metrics_best_val
    return result.metrics


def metric_values(metrics: Metrics) -> dict[str, float | None]:
    """The accuracies of one ``metrics`` table by leaderboard key (None when not evaluated)."""
    out: dict[str, float | None] = {"clean": float(metrics.clean_acc)}
    for key in METRICS[1:]:
        value = metrics.robust.get(key)
        out[key] = float(value) if value is not None else None
    return out


def run_metrics(result: Result, select: str = "final") -> dict[str, float | None]:
    """The accuracies of one result by leaderboard key (None when not evaluated)."""
    return metric_values(selected_metrics(result, select))


def train_device(result: Result) -> str | None:
    """What a run trained on, from result.json: ``env.device`` (``NVIDIA H200``, ``cpu (2 threads)``),
    prefixed ``4 x`` when ``cost.devices`` says it was a data-parallel run on several. None when not
    recorded. The one place the leaderboard reads the device."""
    env, cost = result.env, result.cost
    device = env.device if env is not None else None
    if not isinstance(device, str) or not device:
        device = cost.get("device") if isinstance(cost, dict) else None
        if not isinstance(device, str) or not device:
            return None
    count = cost.get("devices") if isinstance(cost, dict) else None
    return f"{count} x {device}" if isinstance(count, int) and not isinstance(count, bool) and count > 1 else device


def coverage_flag(result: Result) -> str | None:
    """A flag text when the recorded evaluation set misses classes of the dataset, else None."""
    selection = (result.evaluation or {}).get("selection")
    if not isinstance(selection, dict):
        return None
    covered, classes = selection.get("classes_covered"), selection.get("num_classes")
    if isinstance(covered, int) and isinstance(classes, int) and covered < classes:
        return f"evaluated on {covered} of {classes} classes: the accuracy is not the dataset's"
    return None


def serious_flags(result: Result) -> list[str]:
    """The messages of a result's serious flags (``flag_details`` entries with severity "serious"), and
    the class-coverage flag of its evaluation set when the result does not carry it already."""
    details = result.flag_details or []
    texts = [
        str(d.get("message"))
        for d in details
        if isinstance(d, dict) and d.get("severity") == "serious" and isinstance(d.get("message"), str)
    ]
    coverage = coverage_flag(result)
    if coverage and not any(isinstance(d, dict) and d.get("check") == "class_coverage" for d in details):
        texts.append(coverage)
    return texts
