"""``kdbench eval TARGET``: evaluate a finished run or a weights file and write eval.json.

TARGET is either

* a run folder (``runs/<name>/<hash>/``, holding ``model.pt`` and ``recipe.toml``): the network is
  rebuilt from model.pt's metadata (``model``, ``options``, ``num_classes``) and evaluated on the test
  split of the run's recipe (``data.*``) with the same selection of images as `kdbench run`
  (`kdbench.evaluation.selection`: ``eval.n_examples`` or the old ``data.test_subset``, and
  ``eval.examples``); the attacks, eps, norm, step size, batch size, N and seed default to the run's
  ``[eval]`` table and ``seed``, so a plain ``kdbench eval RUN`` reproduces the numbers of its
  result.json (of a run by an older kdbench: on the images that run evaluated when its recipe used
  ``data.test_subset``, with today's attacks and checks); or
* a weights file (a kdbench ``model.pt``, a training checkpoint or a bare state_dict) with
  ``--dataset NAME`` (and ``--model NAME`` unless the file names its model), optionally
  ``--data-option KEY=VALUE`` and ``--data-root DIR``.

Weights are only ever read with ``weights_only=True``. The result, eval.json (schema_version 1)::

    {"schema_version": 1, "target", "kind": "run" | "weights", "model", "dataset",
     "threat_model": {"norm": "Linf" | "L2", "eps": "8/255"},
     "metrics": {"clean_acc", "robust": {fgsm, pgd20, cw, autoattack, ..., "worst"}, "n_eval", "counts"},
     "flags": [...], "flag_details": [...], "evaluation": {selection, attacks, protocol, sanity},
     "seconds": {<attack>: s, ..., "total": s}, "seed", "attacks",
     "eps_sweep": [{"eps", "eps_label", "pgd20"}, ...],          (only with --eps-sweep)
     "eps_sweep_plot": "eps_sweep.png",                           (only with --eps-sweep)
     "env": {"kdbench", "torch", "python", "device", "git_commit", "plugins"}}

written atomically, by default into the run folder (or next to the weights file). ``--eps-sweep``
runs PGD-20 (its step scaled to each eps, `kdbench.evaluation.attack_setup.default_step_size`) at several
budgets on the same samples and seed, stores accuracy against eps in eval.json and draws it
(matplotlib, Agg) into a PNG next to eval.json. Every evaluation runs the sanity checks of
`kdbench.evaluation.sanity`; ``--check-steps`` adds the costly PGD-10/20/50 check, and a sweep is
checked for accuracy rising with eps and, when it reaches 4 x the run's eps or more, for ending near 0.

``--update-result`` (run folders only) also writes the new evaluation into the run's result.json
(metrics, flags, evaluation; the previous file is kept as result.json.orig), so a run trained by an
older kdbench reaches the leaderboard with today's selection, attacks and checks without retraining;
a result that does not record its teacher's identity also gets it, derived from the folder
(`kdbench.folder_teacher`) or from the teacher run ``--teacher RUN`` names, so it is ranked beside
today's runs of that teacher.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdbench._errors import UserError
from kdbench.attacks.threat import Norm
from kdbench.commands.eval_options import (
    DEFAULT_EPS,
    _attack_list,
    _checked_eps,
    _device,
    _sweep_list,
    add_eval_arguments,
    parse_eps,
)
from kdbench.engine.distributed import setup_distributed, teardown_distributed
from kdbench.evaluation.attack_setup import default_step_size
from kdbench.evaluation.eps_sweep import (
    DEFAULT_SWEEP,
    SWEEP_ATTACK,
    _sweep_plot_path,
    check_sweep_reaches_zero,
    plot_eps_sweep,
)
from kdbench.evaluation.progress_store import progress_store_for
from kdbench.evaluation.record import evaluation_record, recorded_teacher, selection_flags, update_result
from kdbench.evaluation.report import EvalReport
from kdbench.evaluation.sanity import check_eps_monotone
from kdbench.evaluation.selection import read_examples, select_examples
from kdbench.evaluation.suite import evaluate
from kdbench.evaluation.targets import DEFAULT_ATTACKS, _load_target
from kdbench.results import SCHEMA_VERSION, environment, eps_label, write_json

__all__ = [
    "DEFAULT_ATTACKS",
    "DEFAULT_SWEEP",
    "add_eval_parser",
    "add_parser",
    "check_sweep_reaches_zero",
    "cmd_eval",
    "parse_eps",
    "plot_eps_sweep",
    "update_result",
]


def add_eval_parser(subparsers: Any) -> None:
    """Add the ``eval`` sub-command to ``subparsers`` (what ``ArgumentParser.add_subparsers`` returns).

    The parsed namespace gets ``handler = cmd_eval`` (the convention of `kdbench.cli.COMMAND_MODULES`).
    """
    p = subparsers.add_parser(
        "eval",
        help="evaluate a run folder or a weights file (table + eval.json)",
        description="Evaluate a finished run folder, or a weights file with --model and --dataset; "
        "print a table and write eval.json.",
    )
    add_eval_arguments(p)
    p.set_defaults(handler=cmd_eval)


#: The entry point `kdbench.cli` calls for every module of its ``COMMAND_MODULES``.
add_parser = add_eval_parser


def _table(report: EvalReport, sweep: list[dict[str, Any]]) -> list[str]:
    rows: list[tuple[str, float | None, float | None]] = [("clean", report.clean_acc, report.seconds.get("clean"))]
    rows += [(name, report.robust[name], report.seconds.get(name)) for name in report.correct if name != "clean"]
    rows.append(("worst", report.worst, None))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'attack':<{width}}  {'accuracy':>8}  {'seconds':>8}"]
    for name, acc, secs in rows:
        shown = f"{acc:.4f}" if acc is not None else "-"
        lines.append(f"{name:<{width}}  {shown:>8}  {f'{secs:.1f}' if secs is not None else '':>8}")
    if sweep:
        lines.append("")
        lines.append(f"{'eps':<8}  {SWEEP_ATTACK:>8}")
        lines += [f"{p['eps_label']:<8}  {p[SWEEP_ATTACK]:>8.4f}" for p in sweep]
    return lines


# ------------------------------------------------------------------------------------ the command


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``kdbench eval`` for parsed ``args`` (see `add_eval_parser`): print a table, write eval.json.

    Returns the exit code (0). User mistakes raise `UserError` (the CLI prints one line, exit code 2).
    """
    started = time.perf_counter()
    # What the command line says is checked before any weights or images are read.
    given_eps = parse_eps(args.eps) if args.eps is not None else None
    given_attacks = _attack_list(args.attacks, ()) if args.attacks else None
    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    given_step = parse_eps(args.step_size, what="--step-size") if args.step_size is not None else None
    if given_step is not None and not given_step > 0:
        raise UserError(f"--step-size must be > 0, got {args.step_size}")
    if args.update_result and not args.target.is_dir():
        raise UserError("--update-result rewrites a run folder's result.json; give a run folder")
    if args.teacher is not None and not args.update_result:
        raise UserError("--teacher names the teacher that --update-result records; add --update-result")
    # The teacher --teacher names is checked before anything is evaluated.
    teacher = recorded_teacher(args.target, args.teacher) if args.teacher is not None else None
    if args.chunk_size is not None and args.chunk_size < 0:
        raise UserError(f"--chunk-size must be >= 0 (0: one chunk), got {args.chunk_size}")
    world = setup_distributed(args.device)  # torchrun: every process evaluates its share of the chunks
    device = _device(args.device, world.local_rank)

    target = _load_target(args)
    d = target.defaults
    norm: Norm = args.norm or d.get("norm") or "linf"
    if given_eps is not None:
        eps = given_eps
    elif d.get("eps") is not None and d.get("norm", norm) == norm:
        eps = float(d["eps"])
    else:
        eps = DEFAULT_EPS[norm]
    eps = _checked_eps(eps, norm, "--eps")
    attacks = given_attacks or _attack_list(None, d["attacks"])
    sweep_eps = _sweep_list(args.eps_sweep, norm) if args.eps_sweep is not None else []
    batch_size = args.batch_size if args.batch_size is not None else int(d["batch_size"])
    seed = args.seed if args.seed is not None else int(d["seed"])
    step_size = given_step if given_step is not None else d.get("step_size")
    n = args.n if args.n is not None else d.get("n")
    if args.examples is not None:
        examples: list[int] | None = read_examples(args.examples, Path.cwd(), what="--examples")
    else:
        examples = d.get("examples")
    selection = select_examples(
        target.images,
        target.labels,
        canonical=target.canonical,
        n=n,
        examples=examples,
        num_classes=target.num_classes,
        n_key="--n" if args.n is not None else str(d.get("n_key", "--n")),
        examples_key="--examples" if args.examples is not None else "eval.examples",
    )
    images, labels = target.images[selection.indices], target.labels[selection.indices]
    out: Path = args.out if args.out is not None else target.default_out
    net = target.net.to(device)
    chunk_size = args.chunk_size if args.chunk_size is not None else int(d.get("chunk_size", 0))
    sharded: dict[str, Any] = {"chunk_size": chunk_size, "world": world}
    setup_seconds = time.perf_counter() - started

    if world.is_main:
        print(
            f"kdbench: evaluating {target.model} on {len(labels)} {target.dataset} test images "
            f"({selection.rule}; {', '.join(attacks)}; "
            f"{'Linf' if norm == 'linf' else 'L2'} eps {eps_label(eps)}; {device.type}"
            f"{f'; {world.world_size} processes' if world.enabled else ''})",
            file=sys.stderr,
        )
    report = evaluate(
        net,
        images,
        labels,
        attacks,
        eps=eps,
        norm=norm,
        batch_size=batch_size,
        device=device,
        seed=seed,
        steps_check=args.check_steps,
        step_size=step_size,
        store=progress_store_for(out),
        **sharded,
    )
    report.flags += selection_flags(selection)
    flags = list(report.flags)
    seconds = {"setup": setup_seconds, **report.seconds}

    sweep: list[dict[str, Any]] = []
    if sweep_eps:
        t0 = time.perf_counter()
        correct_by_eps: dict[float, Tensor] = {}
        for e in sweep_eps:
            point = evaluate(
                net,
                images,
                labels,
                ["clean", SWEEP_ATTACK],
                eps=e,
                norm=norm,
                batch_size=batch_size,
                device=device,
                seed=seed,
                sanity=False,
                **sharded,
            )
            correct_by_eps[e] = point.correct[SWEEP_ATTACK]
            sweep.append(
                {
                    "eps": e,
                    "eps_label": eps_label(e),
                    SWEEP_ATTACK: point.robust[SWEEP_ATTACK],
                    "step_size": default_step_size(e, 20),
                }
            )
        flags += check_eps_monotone(correct_by_eps)
        flags += check_sweep_reaches_zero(correct_by_eps, eps)
        seconds["eps_sweep"] = time.perf_counter() - t0

    if not world.is_main:  # rank 0 writes and reports for every process
        teardown_distributed(wait=True)
        return 0
    plot = _sweep_plot_path(out) if sweep else None
    if plot is not None:
        title = f"{target.model} on {target.dataset}: PGD-20 accuracy vs eps (n={len(labels)})"
        plot_eps_sweep(sweep, plot, title=title, norm=norm)
    seconds["total"] = time.perf_counter() - started

    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "target": str(target.path),
        "kind": target.kind,
        "model": target.model,
        "dataset": target.dataset,
        "threat_model": {"norm": "Linf" if norm == "linf" else "L2", "eps": eps_label(eps)},
        "metrics": report.to_dict(),
        "flags": [str(f) for f in flags],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "attacks": attacks,
        "seed": seed,
    }
    report.flags = flags
    result.update(evaluation_record(report, selection, step_size))
    if sweep:
        result["eps_sweep"] = sweep
        result["eps_sweep_plot"] = plot.name if plot is not None else None
    result["env"] = environment(
        f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu" else torch.cuda.get_device_name(device),
        {"models": [target.model], "datasets": [target.dataset]},
    )
    write_json(out, result)
    progress_store_for(out).clear()  # eval.json holds it all now
    teacher_added = update_result(target.path, result, teacher) if args.update_result else None

    print(
        f"{target.model} | {target.dataset} | {result['threat_model']['norm']} eps {eps_label(eps)} | n={len(labels)}"
    )
    for line in _table(report, sweep):
        print(line)
    for flag in flags:
        print(f"  flag: {flag}")
    print(f"eval: {out}")
    if args.update_result:
        print(f"result: {target.path / 'result.json'} (previous: result.json.orig)")
        if teacher_added is not None:
            print(f"result: teacher identity {teacher_added} recorded")
    if plot is not None:
        print(f"plot: {plot}")
    teardown_distributed(wait=True)
    return 0
