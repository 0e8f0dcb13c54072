"""``kdbench run RECIPE``: every variant of a recipe (its teacher chain first), SIGTERM handled as an
interrupt that checkpoints, and the results printed (one run in full, a sweep as a table)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench._errors import UserError

if TYPE_CHECKING:
    from kdbench.results import Result


__all__ = ["cmd_run"]


def _sigterm_as_interrupt() -> Any:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does, so that a run stopped outside the epoch loop
    (where the trainer's own handler checkpoints) exits 130 with the resume hint instead of dying
    silently. Returns the previous handler."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench.engine.distributed import teardown_distributed
    from kdbench.engine.estimate import format_duration
    from kdbench.engine.progress import make_progress
    from kdbench.engine.trainer import Interrupted
    from kdbench.locations import default_runs_dir, runs_dir_origin
    from kdbench.plan import clock_plan, format_plan, plan_chain, summary_lines
    from kdbench.recipe import apply_overrides, load_recipes, read_raw
    from kdbench.run import default_out_dir, run_recipe

    if args.resume:
        print("kdbench: note: --resume is not needed: resuming is automatic (same command, same hash)", file=sys.stderr)
    device = [f"train.device={args.device}"] if args.device else []
    overrides = list(args.overrides) + device + [_teacher_key(item) for item in args.teacher_overrides]
    if args.teacher_overrides:
        teacher = apply_overrides(read_raw(args.recipe), list(args.overrides), str(args.recipe)).get("teacher")
        if not isinstance(teacher, dict) or "recipe" not in teacher:
            raise UserError(f"{args.recipe}: --teacher-set needs a recipe whose teacher is trained by teacher.recipe")
    variants = load_recipes(args.recipe, overrides)
    if args.out is not None and len(variants) > 1:
        raise UserError(f"{args.recipe} sweeps over {len(variants)} runs; --out names one folder, use --runs-dir")
    started = time.perf_counter()
    planned = []
    if args.dry_run or not args.quiet:
        print(f"runs folder: {default_runs_dir(args.runs_dir)} ({runs_dir_origin(args.runs_dir)})")
        for resolved in variants:
            chain = plan_chain(resolved, args.out or default_out_dir(resolved, args.runs_dir), args.runs_dir)
            print("\n".join(format_plan(chain)))
            planned += chain
        print("\n".join(summary_lines(planned)))
        sys.stdout.flush()
    if args.dry_run:
        return 0
    if args.tensorboard:
        from kdbench.engine.progress import TensorBoardProgress

        TensorBoardProgress.require()
    progress = make_progress(quiet=args.quiet, tensorboard=args.tensorboard)
    clock = getattr(progress, "clock", None)
    if clock is not None:
        clock.plan.update(clock_plan(planned))
    rows: list[tuple[str, Result | None, str]] = []
    previous_sigterm = _sigterm_as_interrupt()
    try:
        for resolved in variants:
            try:
                outcome = run_recipe(resolved, args.out, runs_dir=args.runs_dir, progress=progress)
            except UserError as exc:
                if len(variants) == 1:
                    raise
                print(f"kdbench: error: {resolved.recipe.name}: {exc}", file=sys.stderr)
                rows.append((resolved.recipe.name, None, f"failed: {exc}"))
                continue
            rows.append((resolved.recipe.name, outcome.result, str(outcome.out_dir / "result.json")))
        teardown_distributed(wait=True)
    except Interrupted as exc:
        print(f"kdbench: {exc}; run the same command to resume", file=sys.stderr)
        return Interrupted.exit_code
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (see _sigterm_as_interrupt), outside the epoch loop
        what = f"signal {exc.args[0]}" if exc.args else "signal 2"
        print(
            f"kdbench: stopped by {what} outside training (data, teacher or evaluation); finished epochs are "
            "checkpointed; run the same command to resume",
            file=sys.stderr,
        )
        return Interrupted.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        progress.close()
        teardown_distributed()
    if os.environ.get("RANK", "0") != "0":
        return 0  # a non-zero rank of a torchrun job: rank 0 reports
    if len(variants) == 1:
        _, result, where = rows[0]
        assert result is not None
        _print_teacher(variants[0], args.runs_dir)
        _print_result(result, Path(where).parent)
        print(f"total time: {format_duration(time.perf_counter() - started)}")
        return 0
    _print_summary(rows)
    print(f"total time: {format_duration(time.perf_counter() - started)}")
    return 2 if any(result is None for _, result, _ in rows) else 0


def _teacher_key(item: str) -> str:
    """``--teacher-set train.epochs=2`` is ``--set teacher.set.train.epochs=2``."""
    if "=" not in item:
        raise UserError(f"--teacher-set {item!r} is not KEY=VALUE; write e.g. --teacher-set train.epochs=2")
    return f"teacher.set.{item.strip()}"


def _metric_cells(result: Result) -> list[str]:
    m = result.metrics
    robust = m.robust
    cells = [f"{m.clean_acc:.4f}"]
    for key in ("fgsm", "pgd20", "cw", "autoattack"):
        value = robust.get(key)
        cells.append("-" if value is None else f"{value:.4f}")
    return cells


def _print_result(result: Result, out: Path) -> None:
    m = result.metrics
    robust = {k: v for k, v in m.robust.items() if v is not None}
    parts = [f"clean {m.clean_acc:.4f}"] + [f"{k} {v:.4f}" for k, v in robust.items()]
    print(f"{result.name}: {' | '.join(parts)} (n={m.n_eval})")
    for flag in result.flags:
        print(f"  flag: {flag}")
    print(f"result: {out / 'result.json'}")


def _print_teacher(resolved: Any, runs_dir: Path | None) -> None:
    """The teacher's own accuracy (from its run's result.json), so a bad teacher is seen at once."""
    from kdbench.run import default_out_dir
    from kdbench.run_folder import RunFolder

    sub = resolved.teacher_recipe
    if sub is None:
        return
    folder = RunFolder(default_out_dir(sub, runs_dir))
    result = folder.read_result()
    if result is None:
        return
    m = result.metrics
    robust = {k: v for k, v in m.robust.items() if v is not None and k != "worst"}
    parts = [f"clean {m.clean_acc:.4f}"] + [f"{k} {v:.4f}" for k, v in robust.items()]
    print(f"teacher {result.name}: {' | '.join(parts)} (n={m.n_eval}; {folder.path})")


def _print_summary(rows: list[tuple[str, Result | None, str]]) -> None:
    header = ["run", "method", "seed", "clean", "fgsm", "pgd20", "cw", "autoattack", "flags", "result"]
    table = [header]
    for name, result, where in rows:
        if result is None:
            table.append([name, "-", "-", "-", "-", "-", "-", "-", "-", where])
        else:
            flags = str(len(result.flags))
            table.append([name, result.method, str(result.seed), *_metric_cells(result), flags, where])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])


# -------------------------------------------------------------------------------------- validate
