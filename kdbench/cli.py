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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench._errors import PluginError, UserError, did_you_mean
from kdbench._registry import Registry, registries
from kdbench.commands.run import cmd_run

if TYPE_CHECKING:
    pass

__all__ = ["COMMAND_MODULES", "main"]

#: Sub-commands in modules of their own, by name. Each module has ``add_parser(subparsers)``, which
#: adds its sub-command and sets ``handler`` (``args -> exit code``) with ``set_defaults``. A module
#: that fails to import breaks only its own sub-command.
COMMAND_MODULES = {
    "eval": "kdbench.commands.eval",
    "bench": "kdbench.commands.bench",
    "leaderboard": "kdbench.commands.leaderboard",
    "robustbench": "kdbench.commands.robustbench",
    "analyze": "kdbench.commands.analyze",
    "export": "kdbench.commands.export",
    "plugins": "kdbench.commands.plugins",
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
        help="override a recipe key, e.g. --set train.epochs=5 (repeatable; does not reach the teacher recipe)",
    )
    run.add_argument(
        "--teacher-set",
        dest="teacher_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the teacher recipe, e.g. --teacher-set train.epochs=2 "
        "(the same as --set teacher.set.train.epochs=2; repeatable)",
    )
    run.add_argument("--out", type=Path, help="output folder (default: <runs dir>/<name>/<hash>/)")
    run.add_argument(
        "--runs-dir",
        type=Path,
        help="root of default output folders (default: $KDBENCH_RUNS_DIR, else ~/.local/share/kdbench/runs)",
    )
    run.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="train on this device (the same as --set train.device=...)"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="not needed: an interrupted run resumes from its checkpoint when the same command runs again",
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard scalars to each run's tensorboard/ folder (pip install 'kdbench[tensorboard]')",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs (a sweep's variants and their teacher chain) with status and estimated cost",
    )
    run.set_defaults(handler=cmd_run)

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
    except BrokenPipeError:
        # `kdbench show pgd | head`: the reader left; say nothing more (Python docs, "Note on SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
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


def _cmd_validate(args: argparse.Namespace) -> int:
    from kdbench.recipe import check_files, load_recipes

    failed = 0
    for path in args.recipes:
        try:
            variants = load_recipes(path, args.overrides)
            for variant in variants:
                check_files(variant)
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
    from kdbench.evaluation.catalog import EVALUATION_ATTACKS

    evaluation = args.kind in (None, "evaluation", "eval", "attacks", "attack")
    regs = (
        []
        if args.kind in ("evaluation", "eval")
        else [_registry_for(args.kind)]
        if args.kind
        else list(registries().values())
    )
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
    if evaluation:
        for name, (summary, _) in EVALUATION_ATTACKS.items():
            if not pattern or pattern in name:
                rows.append(("evaluation", name, "kdbench", summary))
    if not rows:
        print("nothing matches", file=sys.stderr)
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for kind, name, provider, summary in rows:
        print(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {provider:<{widths[2]}}  {summary}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from kdbench.evaluation.catalog import EVALUATION_ATTACKS, describe_evaluation_attack, evaluation_attack_name

    kind, _, name = args.name.rpartition("/")
    if kind in ("evaluation", "eval") or (not kind and evaluation_attack_name(name) and not _registered(name)):
        if evaluation_attack_name(name) is None:
            raise UserError(f"no evaluation attack named {name!r}; {did_you_mean(name, list(EVALUATION_ATTACKS))}")
        print(describe_evaluation_attack(name))
        return 0
    regs = [_registry_for(kind)] if kind else list(registries().values())
    found = [reg for reg in regs if name in reg]
    if not found:
        if kind:  # KIND/NAME: the names of that kind, and where the name lives if it is another kind's
            elsewhere = [r.kind[:-1] for r in registries().values() if name in r]
            hint = f" ({name!r} is a {elsewhere[0]}: kdbench show {elsewhere[0]}/{name})" if elsewhere else ""
            noun = regs[0].kind[:-1]
            raise UserError(f"no {noun} named {name!r}; {did_you_mean(name, regs[0].names())}{hint}")
        everything = [n for reg in regs for n in reg.names()] + list(EVALUATION_ATTACKS)
        raise UserError(f"no component named {name!r}; {did_you_mean(name, everything)}")
    if len(found) > 1:
        raise UserError(f"{name!r} is a {' and a '.join(r.kind[:-1] for r in found)}; write KIND/{name}")
    from kdbench.describe import describe_component

    reg = found[0]
    entry = reg.entry(name)
    print(describe_component(reg.kind, entry.name, entry.provider, entry.target, reg.get(name)))
    if evaluation_attack_name(name):
        print(f"\nalso an evaluation attack: kdbench show evaluation/{name}")
    return 0


def _registered(name: str) -> bool:
    return any(name in reg for reg in registries().values())


if __name__ == "__main__":
    raise SystemExit(main())
