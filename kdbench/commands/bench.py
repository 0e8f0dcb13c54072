"""``kdbench bench RECIPE``: how fast a recipe trains and evaluates, and how that compares with the usual loop.

::

    kdbench bench RECIPE [--set KEY=VALUE ...] [--steps N] [--warmup N] [--json FILE]
                         [--eval-n N] [--no-eval] [--no-autoattack] [--baseline]
                         [--eval-only] [--weights PATH]

Builds the recipe's data, teacher, student, method and attack as ``kdbench run`` does (the teacher from
its finished run or checkpoint, else randomly initialised: nothing is trained), times the training step
(`kdbench.bench.core`), PGD-20 and standard AutoAttack on ``--eval-n`` test images, and with
``--baseline`` the conventional loop of published code (`kdbench.bench.baseline`) in the same process.
``--eval-only`` times the evaluation alone (no training step, ``"step": null``); ``--weights PATH`` loads
the evaluated network (the recipe's student) from a run folder or weights file first, so AutoAttack is
timed on a trained model rather than on random weights. Prints a table; ``--json FILE`` writes::

    {"command", "mode": "train" | "eval", "recipe", "name", "recipe_hash", "device", "cpu", "torch", "python",
     "git_commit",
     "versions": {"torch", "torchvision", "timm", "numpy", "pydantic", "pyautoattack", "cuda", "cudnn", "gpu"},
     "precision", "channels_last", "compile", "compile_mode", "batch_size", "method", "student", "student_weights",
     "teacher", "attack", "dataset", "image_size", "train_size", "load_average", "load_average_end",
     "peak": {"tflops", "source", "dtype", "measured_tflops"},
     "step": {"images_per_second", "seconds_per_epoch", "step_ms", "step_ms_median", "steps", "warmup",
              "images_per_step", "flops_per_step", "model_flops_per_step", "tflops", "mfu",
              "peak_memory_bytes", "peak_memory_source"} | null,
     "eval": {"n", "batch_size", "model", "clean_acc", "clean", "pgd20", "autoattack", "note"} | null,
     "baseline": {<the keys of "step">, "num_workers", "pin_memory", "precision", "channels_last",
                  "attack_gradient"} | null,
     "speedup": <fast images/s over baseline images/s> | null}

Timings on a CPU shared with other work are noisy; compare numbers taken on the same idle machine.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from kdbench._errors import UserError

__all__ = ["add_parser", "cmd_bench", "format_report"]


def add_parser(subparsers: Any) -> None:
    """Add ``bench`` to ``subparsers`` with ``handler = cmd_bench`` (see `kdbench.cli.COMMAND_MODULES`)."""
    p = subparsers.add_parser(
        "bench",
        help="time a recipe's training step and evaluation (and the conventional loop with --baseline)",
        description="Time a recipe's training step (images/s, seconds per CIFAR epoch, FLOPs, MFU, peak memory) "
        "and its evaluation attacks; with --baseline also the conventional DataLoader/fp32 loop.",
    )
    p.add_argument("recipe", type=Path)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set train.batch_size=256 (repeatable)",
    )
    p.add_argument("--steps", type=int, metavar="N", help="timed training steps (default: 50 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, metavar="N", help="untimed steps first (default: 10 on CUDA, 1 on CPU)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the measurements as JSON")
    p.add_argument(
        "--eval-n",
        type=int,
        metavar="N",
        help="test images for the evaluation timing; 0 skips it (default: 10000 on CUDA, 32 on CPU)",
    )
    p.add_argument("--no-eval", action="store_true", help="do not time the evaluation attacks")
    p.add_argument("--no-autoattack", action="store_true", help="time PGD-20 but not AutoAttack")
    p.add_argument("--baseline", action="store_true", help="also time the conventional loop and report the speedup")
    p.add_argument(
        "--eval-only", action="store_true", help="time only the evaluation attacks (PGD-20, AutoAttack), no training"
    )
    p.add_argument(
        "--weights",
        type=Path,
        metavar="PATH",
        help="load the evaluated network (the recipe's student) from a run folder or weights file first",
    )
    p.add_argument(
        "--baseline-grad",
        choices=("backward", "input"),
        default="backward",
        help="how the conventional attack takes its gradient: loss.backward() through the model "
        "(default) or torch.autograd.grad on the input only",
    )
    p.add_argument("--workers", type=int, metavar="N", help="DataLoader workers of the baseline (default min(4, cpus))")
    p.add_argument(
        "--runs-dir", type=Path, help="where finished teacher runs are (default: $KDBENCH_RUNS_DIR or ./runs)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(handler=cmd_bench)


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed (reconstructed from the parsed arguments, so it is exact in tests too)."""
    parts = ["kdbench", "bench", str(args.recipe)]
    for item in args.overrides:
        parts += ["--set", item]
    for flag, value in (("--steps", args.steps), ("--warmup", args.warmup), ("--eval-n", args.eval_n)):
        if value is not None:
            parts += [flag, str(value)]
    if args.workers is not None:
        parts += ["--workers", str(args.workers)]
    for flag, on in (
        ("--no-eval", args.no_eval),
        ("--no-autoattack", args.no_autoattack),
        ("--eval-only", args.eval_only),
    ):
        if on:
            parts.append(flag)
    if args.baseline:
        parts.append("--baseline")
        if args.baseline_grad != "backward":
            parts += ["--baseline-grad", args.baseline_grad]
    if args.weights is not None:
        parts += ["--weights", str(args.weights)]
    if args.json is not None:
        parts += ["--json", str(args.json)]
    return shlex.join(parts)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _step_table(fast: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    """The training-step rows: the fast path beside the conventional loop (when it was timed)."""
    rows: list[tuple[str, str, str]] = [
        ("training step", "fast", "baseline" if base else ""),
        ("images/s", f"{fast['images_per_second']:.1f}", f"{base['images_per_second']:.1f}" if base else ""),
        ("s / CIFAR epoch", f"{fast['seconds_per_epoch']:.1f}", f"{base['seconds_per_epoch']:.1f}" if base else ""),
        ("ms / step", f"{fast['step_ms']:.1f}", f"{base['step_ms']:.1f}" if base else ""),
        ("GFLOP / step", f"{fast['flops_per_step'] / 1e9:.2f}", f"{base['flops_per_step'] / 1e9:.2f}" if base else ""),
        ("TFLOP/s", f"{fast['tflops']:.3f}", f"{base['tflops']:.3f}" if base else ""),
        ("MFU", f"{fast['mfu'] * 100:.2f}%", f"{base['mfu'] * 100:.2f}%" if base else ""),
        ("peak memory", _gib(fast["peak_memory_bytes"]), _gib(base["peak_memory_bytes"]) if base else ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}".rstrip() for a, b, c in rows]
    if "cpu maxrss" in fast["peak_memory_source"]:
        lines.append("  (peak memory on CPU: the whole process's maximum resident set, a rough number)")
    return lines


def format_report(report: dict[str, Any]) -> list[str]:
    """The table ``kdbench bench`` prints."""
    fast, base = report["step"], report["baseline"]
    teacher = report["teacher"]
    lines = [
        f"{report['name']}: {report['method']} | student {report['student']} | teacher "
        + (f"{teacher['model']} ({teacher['weights']})" if teacher else "-")
        + f" | batch {report['batch_size']}",
        f"{report['device']} | {report['precision']} | channels_last {'on' if report['channels_last'] else 'off'}"
        f" | compile {'on' if report['compile'] else 'off'} | peak {report['peak']['tflops']:.2f} TFLOP/s "
        f"({report['peak']['source']})",
        "",
    ]
    if fast is None:
        weights = report.get("student_weights", "random init")
        lines.append(f"evaluation only (weights: {weights}); no training step timed")
    else:
        lines += _step_table(fast, base)
    if report["speedup"] is not None:
        lines.append(f"speedup: {report['speedup']:.2f}x the conventional loop")
    ev = report["eval"]
    if ev is not None:
        lines.append("")
        lines.append(f"evaluation on {ev['n']} test images (batch {ev['batch_size']}):")
        for name in ("pgd20", "autoattack"):
            block = ev.get(name)
            if block is None:
                continue
            rate = block["images_per_second"]
            lines.append(
                f"  {name:<10} {block['seconds']:.2f} s  ({rate:.1f} images/s; {block['seconds_per_10000']:.0f} s "
                "per 10,000 images)"
                if rate is not None
                else f"  {name:<10} {block['seconds']:.2f} s"
            )
        if ev.get("autoattack_skipped"):
            lines.append(f"  autoattack skipped: {ev['autoattack_skipped']}")
    return lines


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``kdbench bench`` for parsed ``args``: print the table, write ``--json``. Returns 0."""
    from kdbench.bench.core import BenchOptions, benchmark
    from kdbench.recipe import load_recipes
    from kdbench.results import write_json

    variants = load_recipes(args.recipe, args.overrides)
    if len(variants) > 1:
        raise UserError(
            f"{args.recipe} sweeps over {len(variants)} runs; bench times one: "
            "copy the variant you want into a recipe without [sweep]"
        )
    for flag, value in (("--steps", args.steps), ("--warmup", args.warmup), ("--eval-n", args.eval_n)):
        if value is not None and value < (1 if flag == "--steps" else 0):
            raise UserError(f"{flag} must be >= {1 if flag == '--steps' else 0}, got {value}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    options = BenchOptions(
        steps=args.steps,
        warmup=args.warmup,
        eval_n=args.eval_n,
        evaluate=not args.no_eval,
        autoattack=not args.no_autoattack,
        baseline=args.baseline,
        baseline_gradient=args.baseline_grad,
        eval_only=args.eval_only,
        weights=args.weights,
        num_workers=args.workers,
        runs_dir=args.runs_dir,
    )

    def log(line: str) -> None:
        if not args.quiet:
            print(f"kdbench: {line}", file=sys.stderr, flush=True)

    measured = benchmark(variants[0], options, log)
    report = {"command": _command_line(args), **measured}
    for line in format_report(report):
        print(line)
    if args.json is not None:
        write_json(args.json, report)
        print(f"json: {args.json}")
    return 0
