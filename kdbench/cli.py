"""The ``kdbench`` command line (also ``python -m kdbench``).

User mistakes (`kdbench.UserError`) print one line and exit with code 2; a run stopped by a signal
exits with 130 after checkpointing. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kdbench._errors import PluginError, UserError, did_you_mean
from kdbench._registry import Registry, registries

__all__ = ["COMMAND_MODULES", "main"]

#: Sub-commands in modules of their own, by name. Each module has ``add_parser(subparsers)``, which
#: adds its sub-command and sets ``handler`` (``args -> exit code``) with ``set_defaults``. A module
#: that fails to import breaks only its own sub-command.
COMMAND_MODULES = {
    "eval": "kdbench.evaluation.command",
    "bench": "kdbench.bench.command",
    "leaderboard": "kdbench.leaderboard.command",
    "robustbench": "kdbench.leaderboard.robustbench",
    "analyze": "kdbench.analysis.command",
    "export": "kdbench.export",
    "plugins": "kdbench.plugins_cmd",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdbench", description="Adversarially robust knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train and evaluate a recipe (every variant of its [sweep])")
    run.add_argument("recipe", type=Path)
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set train.epochs=5 (repeatable)",
    )
    run.add_argument("--out", type=Path, help="output folder (default: runs/<name>/<hash>/)")
    run.add_argument(
        "--runs-dir", type=Path, help="root of default output folders (default: $KDBENCH_RUNS_DIR or ./runs)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--dry-run", action="store_true", help="list the runs (a sweep's variants) and their status")
    run.set_defaults(handler=_cmd_run)

    validate = sub.add_parser("validate", help="check recipes without running them")
    validate.add_argument("recipes", type=Path, nargs="+")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(handler=_cmd_validate)

    lst = sub.add_parser("list", help="registered components and the distributions that provide them")
    lst.add_argument("kind", nargs="?", help="models, datasets, attacks or methods")
    lst.add_argument("pattern", nargs="?", help="substring of the name")
    lst.set_defaults(handler=_cmd_list)

    show = sub.add_parser("show", help="a component's description and options")
    show.add_argument("name", help="component name, or KIND/NAME when several kinds share it")
    show.set_defaults(handler=_cmd_show)

    for name, module in COMMAND_MODULES.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except Exception as exc:  # a bug in one command must not take the others down
            broken = sub.add_parser(name, help=f"(unavailable: {type(exc).__name__})", add_help=False)
            broken.add_argument("rest", nargs=argparse.REMAINDER)
            broken.set_defaults(handler=_unavailable(module, exc))
    return parser


def _unavailable(module: str, exc: Exception) -> Any:
    def handler(args: argparse.Namespace) -> int:
        raise RuntimeError(f"the {args.command!r} command failed to import from {module}") from exc

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except UserError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kdbench: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A read-only or forbidden path (--out, --runs-dir, an output file): the user's to fix, in one line.
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or exc.filename is None:
            raise
        print(
            f"kdbench: error: cannot write or read {exc.filename} ({exc.strerror}); "
            "choose a writable location (--out, --runs-dir) or fix its permissions",
            file=sys.stderr,
        )
        return 2


# ------------------------------------------------------------------------------------------- run


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


def _cmd_run(args: argparse.Namespace) -> int:
    from kdbench.engine.distributed import teardown_distributed
    from kdbench.engine.progress import make_progress
    from kdbench.engine.trainer import Interrupted
    from kdbench.recipe import load_recipes
    from kdbench.run import default_out_dir, run_recipe, status

    variants = load_recipes(args.recipe, args.overrides)
    if args.out is not None and len(variants) > 1:
        raise UserError(f"{args.recipe} sweeps over {len(variants)} runs; --out names one folder, use --runs-dir")
    if args.dry_run:
        for resolved in variants:
            out = args.out or default_out_dir(resolved, args.runs_dir)
            print(f"{resolved.recipe.name}  {resolved.short_hash}  {status(resolved, out):<8}  {out}")
        return 0
    progress = make_progress(quiet=args.quiet)
    rows: list[tuple[str, dict[str, Any] | None, str]] = []
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
        _print_result(result, Path(where).parent)
        return 0
    _print_summary(rows)
    return 2 if any(result is None for _, result, _ in rows) else 0


def _metric_cells(result: dict[str, Any]) -> list[str]:
    m = result["metrics"]
    robust = m.get("robust", {})
    cells = [f"{m['clean_acc']:.4f}"]
    for key in ("fgsm", "pgd20", "cw", "autoattack"):
        value = robust.get(key)
        cells.append("-" if value is None else f"{value:.4f}")
    return cells


def _print_result(result: dict[str, Any], out: Path) -> None:
    m = result["metrics"]
    robust = {k: v for k, v in m.get("robust", {}).items() if v is not None}
    parts = [f"clean {m['clean_acc']:.4f}"] + [f"{k} {v:.4f}" for k, v in robust.items()]
    print(f"{result['name']}: {' | '.join(parts)} (n={m.get('n_eval')})")
    for flag in result.get("flags", []):
        print(f"  flag: {flag}")
    print(f"result: {out / 'result.json'}")


def _print_summary(rows: list[tuple[str, dict[str, Any] | None, str]]) -> None:
    header = ["run", "method", "seed", "clean", "fgsm", "pgd20", "cw", "autoattack", "flags", "result"]
    table = [header]
    for name, result, where in rows:
        if result is None:
            table.append([name, "-", "-", "-", "-", "-", "-", "-", "-", where])
        else:
            flags = str(len(result.get("flags", [])))
            table.append([name, result["method"], str(result["seed"]), *_metric_cells(result), flags, where])
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])


# -------------------------------------------------------------------------------------- validate


def _cmd_validate(args: argparse.Namespace) -> int:
    from kdbench.recipe import load_recipes

    failed = 0
    for path in args.recipes:
        try:
            variants = load_recipes(path, args.overrides)
        except UserError as exc:
            failed += 1
            print(f"kdbench: error: {exc}", file=sys.stderr)
        else:
            if len(variants) == 1:
                print(f"{path}: ok ({variants[0].recipe.name}, hash {variants[0].short_hash})")
            else:
                print(f"{path}: ok ({len(variants)} runs: {', '.join(v.recipe.name for v in variants)})")
    return 2 if failed else 0


# ------------------------------------------------------------------------------------ list / show


def _registry_for(kind: str) -> Registry[Any]:
    regs = registries()
    key = kind if kind in regs else f"{kind}s"
    if key not in regs:
        raise UserError(f"unknown kind {kind!r}; {did_you_mean(kind, regs)}")
    return regs[key]


def _summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _cmd_list(args: argparse.Namespace) -> int:
    regs = [_registry_for(args.kind)] if args.kind else list(registries().values())
    pattern = (args.pattern or "").lower()
    rows: list[tuple[str, str, str, str]] = []
    for reg in regs:
        for entry in reg.entries():
            if pattern and pattern not in entry.name.lower():
                continue
            try:
                summary = _summary(reg.get(entry.name))
            except PluginError as exc:
                summary = f"[failed to load] {exc}"
            rows.append((reg.kind, entry.name, entry.provider, summary))
    if not rows:
        print("nothing matches", file=sys.stderr)
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for kind, name, provider, summary in rows:
        print(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {provider:<{widths[2]}}  {summary}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    kind, _, name = args.name.rpartition("/")
    regs = [_registry_for(kind)] if kind else list(registries().values())
    found = [reg for reg in regs if name in reg]
    if not found:
        everything = [n for reg in regs for n in reg.names()]
        raise UserError(f"no component named {name!r}; {did_you_mean(name, everything)}")
    if len(found) > 1:
        raise UserError(f"{name!r} is a {' and a '.join(r.kind[:-1] for r in found)}; write KIND/{name}")
    reg = found[0]
    entry = reg.entry(name)
    obj = reg.get(name)
    print(f"{reg.kind[:-1]} {entry.name}  ({entry.provider}, {entry.target})")
    print()
    print(inspect.getdoc(obj) or "(no description)")
    config: type[BaseModel] = getattr(obj, "Config", None) or BaseModel
    print()
    if not config.model_fields:
        print("options: none")
        return 0
    print("options:")
    for key, info in config.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "required" if default is PydanticUndefined else f"default {default!r}"
        annotation = getattr(info.annotation, "__name__", str(info.annotation)).replace("typing.", "")
        line = f"  {key}: {annotation} ({shown})"
        if info.description:
            line += f"  {info.description}"
        print(line)
    extra = {k: v for k, v in getattr(obj, "attack_defaults", {}).items()}
    if extra:
        print(f"training-attack defaults: {extra}")
    for teacher, purpose in getattr(obj, "extra_teachers", {}).items():
        print(f"additional teacher [teachers.{teacher}]: {purpose}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
