"""The plan of a ``kdbench run``: every recipe it will run (teacher chain included), its status and cost.

`kdbench run --dry-run` prints it; `kdbench run` prints it before training. A recipe's teacher recipe
runs first, into ``<runs dir>/<teacher name>/<teacher hash>/``, with the teacher recipe's own keys:
``--set`` changes the recipe named on the command line only, ``teacher.set`` (``--teacher-set``)
changes the teacher recipe. Costs come from `kdbench.engine.estimate`; finished runs cost nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kdbench.engine.checkpoint import CheckpointStore
from kdbench.engine.estimate import RunCost, estimate_run, format_duration, warn_if_long
from kdbench.locations import find_finished_elsewhere
from kdbench.recipe import ResolvedRecipe

__all__ = ["PlannedRun", "clock_plan", "format_plan", "plan_chain", "summary_lines", "total_seconds"]


@dataclass(frozen=True)
class PlannedRun:
    """One recipe of the chain: ``depth`` 0 is the recipe run, 1 its teacher, 2 the teacher's teacher."""

    resolved: ResolvedRecipe
    out: Path
    status: str  # done | partial | new
    depth: int
    cost: RunCost
    epochs_done: int
    elsewhere: Path | None  # a finished run of the same hash in another runs folder

    @property
    def remaining_seconds(self) -> float | None:
        """Estimated seconds still to spend on this recipe (0 when done)."""
        if self.status == "done":
            return 0.0
        train, evaluation = self.cost.train_seconds, self.cost.eval_seconds
        if train is None or evaluation is None:
            return None
        left = max(self.cost.epochs - self.epochs_done, 0) / max(self.cost.epochs, 1)
        return train * left + evaluation


def plan_chain(resolved: ResolvedRecipe, out: Path, runs_dir: Path | None, depth: int = 0) -> list[PlannedRun]:
    """``resolved`` (into ``out``) followed by its teacher chain (each in the runs folder)."""
    from kdbench.run import default_out_dir, status

    state = status(resolved, out)
    positions = CheckpointStore(out / "checkpoints").positions() if state == "partial" else []
    epochs_done = positions[0][0] if positions else 0
    elsewhere = find_finished_elsewhere(resolved.recipe.name, resolved.hash, out) if state == "new" else None
    planned = [PlannedRun(resolved, out, state, depth, estimate_run(resolved), epochs_done, elsewhere)]
    if resolved.teacher_recipe is not None and state != "done":
        sub = resolved.teacher_recipe
        planned += plan_chain(sub, default_out_dir(sub, runs_dir), runs_dir, depth + 1)
    return planned


def total_seconds(planned: list[PlannedRun]) -> float | None:
    """Estimated seconds of everything not done yet, each recipe counted once (sweeps share teachers)."""
    seen: set[str] = set()
    total = 0.0
    for p in planned:
        if p.resolved.hash in seen:
            continue
        seen.add(p.resolved.hash)
        left = p.remaining_seconds
        if left is None:
            return None
        total += left
    return total


def clock_plan(planned: list[PlannedRun]) -> dict[str, tuple[float, float]]:
    """For `kdbench.engine.progress.RunClock.plan`: recipe hash -> (estimated training seconds, estimated
    seconds of everything after that training), in execution order (each chain's deepest teacher first)."""
    order: list[PlannedRun] = []
    seen: set[str] = set()
    chains: list[list[PlannedRun]] = []
    for p in planned:
        if p.depth == 0:
            chains.append([])
        chains[-1].append(p)
    for chain in chains:
        for p in reversed(chain):
            if p.status != "done" and p.resolved.hash not in seen and p.remaining_seconds is not None:
                seen.add(p.resolved.hash)
                order.append(p)
    plan: dict[str, tuple[float, float]] = {}
    for i, p in enumerate(order):
        later = sum(q.remaining_seconds or 0.0 for q in order[i + 1 :])
        plan[p.resolved.hash] = (p.cost.train_seconds or 0.0, (p.cost.eval_seconds or 0.0) + later)
    return plan


def _cost_text(p: PlannedRun) -> str:
    if p.status == "done":
        return "finished: reused, costs nothing"
    text = p.cost.describe()
    if p.status == "partial":
        text += f"; {p.epochs_done} epoch{'s' if p.epochs_done != 1 else ''} done, resumes"
    return text


def format_plan(planned: list[PlannedRun]) -> list[str]:
    """The lines `kdbench run` prints: per recipe its hash, status, folder, file, cost and notes."""
    lines: list[str] = []
    for p in planned:
        pad = "  " * p.depth
        label = "teacher: " if p.depth else ""
        r = p.resolved
        lines.append(f"{pad}{label}{r.recipe.name}  {r.short_hash}  {p.status:<8}  {p.out}")
        inner = pad + "    "
        if p.depth:
            extra = (
                f" with teacher.set {' '.join(r.overrides)}"
                if r.overrides
                else " (its own keys: --set does not reach it, --teacher-set does)"
            )
            lines.append(f"{inner}recipe: {os.path.normpath(r.file)}{extra}")
        lines.append(f"{inner}cost: {_cost_text(p)}")
        if p.elsewhere is not None:
            lines.append(
                f"{inner}note: a finished run with this hash is in {p.elsewhere}; "
                f"use --runs-dir {p.elsewhere.parent.parent} (or KDBENCH_RUNS_DIR) to reuse it"
            )
    return lines


def summary_lines(planned: list[PlannedRun]) -> list[str]:
    """``estimated total: ...`` and, for a long CPU run, the warning."""
    total = total_seconds(planned)
    if total is None:
        return ["estimated total: unknown (a dataset's size is only known after decoding it)"]
    if total == 0:
        return ["estimated total: nothing to do, every run is finished"]
    device = next((p.cost.device for p in planned if p.status != "done"), "cpu")
    lines = [f"estimated total: ~{format_duration(total)} on {device} (FLOP count; a rough guide, +-2x)"]
    warning = warn_if_long(total, device)
    if warning:
        lines.append(warning)
    return lines
