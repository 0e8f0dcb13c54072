"""Time a recipe's training step and evaluation, count its FLOPs, and compare with the conventional loop.

The components are built exactly as `kdbench.run` builds them (`kdbench.build`, `resolve_hardware`,
the same seeds and memory format), and the step timed is `Trainer.step` on batches of
`DeviceLoader.epoch`, i.e. what ``kdbench run`` executes per batch: the training attack, the teacher's
passes and the student's update. Only speed is measured, so the teacher need not be trained: its
weights come from the teacher recipe's finished run or ``teacher.checkpoint`` when present, else the
teacher architecture is used with its random initialisation (nothing is trained for a benchmark).

The report's quantities (images/s, seconds per epoch, FLOPs, TFLOP/s, MFU) are defined in
`kdbench.bench.measure`. ``model_flops_per_step`` is the fast path's count for both loops: the work the
method needs. The conventional loop executes more (its attack also computes parameter gradients); its own
count is its ``flops_per_step``.
"""

from __future__ import annotations

import copy
import itertools
import platform
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdbench._errors import UserError
from kdbench.build import (
    build_attack,
    build_data,
    build_source,
    build_student_and_method,
    load_network_weights,
    network_spec,
    place,
    student_normalization,
)
from kdbench.data.cache import load_split_cached
from kdbench.engine.checkpoint import CheckpointStore
from kdbench.engine.compile import compiled
from kdbench.engine.hardware import Hardware, resolve_hardware
from kdbench.engine.progress import make_progress
from kdbench.engine.trainer import Trainer
from kdbench.method import Method
from kdbench.models.base import Network
from kdbench.recipe import ResolvedRecipe
from kdbench.results import git_commit
from kdbench.teachers import build_teacher

from .baseline import ConventionalLoop, conventional_loader, default_num_workers
from .eval_throughput import evaluation_throughput
from .measure import Timing, count_flops, cpu_model, library_versions, load_average, step_block, time_steps
from .peaks import Peak, device_peak

__all__ = ["DEFAULTS", "BenchOptions", "benchmark"]

#: Defaults per device type: (timed steps, warm-up steps, evaluation images).
DEFAULTS = {"cuda": (50, 10, 10_000), "cpu": (5, 1, 32)}


@dataclass
class BenchOptions:
    """What `benchmark` measures; ``None`` means the device's default from `DEFAULTS`."""

    steps: int | None = None
    warmup: int | None = None
    eval_n: int | None = None
    evaluate: bool = True
    autoattack: bool = True
    baseline: bool = False
    baseline_gradient: str = "backward"  # "backward" | "input": see ConventionalPGD
    num_workers: int | None = None  # of the conventional loop's DataLoader; None: min(4, cpus)
    runs_dir: Path | None = None  # where finished teacher runs are looked for
    eval_only: bool = False  # time the evaluation attacks only: no training step, no baseline
    weights: Path | None = None  # the evaluated (student) network's weights: a run folder or a weights file


# ------------------------------------------------------------------------------------ building


def _teacher(resolved: ResolvedRecipe, runs_dir: Path | None, student_classes: int) -> tuple[Network | None, str]:
    """The frozen teacher and where its weights came from ("random init" when no trained weights exist).

    `kdbench.teachers.build_teacher`, the builder `kdbench.run` uses (normalisation, zoo models, label
    spaces), except that an unfinished teacher recipe is not run: its architecture is used with random
    weights, which costs exactly as much per step.
    """
    from kdbench.run import default_out_dir
    from kdbench.run_folder import RunFolder

    if resolved.recipe.teacher is None or resolved.teacher_config is None:
        return None, "none"

    def finished_run(sub: ResolvedRecipe) -> Path | None:
        folder = RunFolder(default_out_dir(sub, runs_dir))
        return folder.path if folder.finished(sub.hash) is not None else None

    built = build_teacher(resolved, student_classes, finished_run, lambda _line: None, untrained_ok=True)
    return built.network, built.identity.path or built.identity.key


def _global_seed(seed: int, epoch: int) -> int:
    """A seed for the global RNG (attack starts) per epoch; any fixed value serves a speed measurement."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


def _fast_batches(loader: Any, seed: int) -> Iterator[tuple[int, int, tuple[Tensor, Tensor, Tensor]]]:
    """``(epoch, batch, (x, y, index))`` from `DeviceLoader.epoch`, epoch after epoch, the global RNG seeded
    at each epoch's start as the trainer does."""
    for epoch in itertools.count():
        torch.manual_seed(_global_seed(seed, epoch))
        for batch, item in enumerate(loader.epoch(epoch)):
            yield epoch, batch, item


# ------------------------------------------------------------------------------------ the benchmark


def benchmark(
    resolved: ResolvedRecipe, options: BenchOptions | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Measure ``resolved``'s training step (and optionally evaluation and the conventional loop).

    Returns the JSON-ready report (see `kdbench.commands.bench` for its keys). ``log`` receives progress
    lines (default: none).
    """
    opts = options or BenchOptions()
    say = log or (lambda _line: None)
    r = resolved.recipe
    hw = resolve_hardware(r.train.device, r.train.precision, r.train.channels_last, r.train.deterministic)
    default_steps, default_warmup, default_n = DEFAULTS["cuda" if hw.device.type == "cuda" else "cpu"]
    steps = opts.steps if opts.steps is not None else default_steps
    warmup = opts.warmup if opts.warmup is not None else default_warmup
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0; got {steps} and {warmup}")
    n = opts.eval_n if opts.eval_n is not None else default_n
    if opts.eval_only and (opts.baseline or not opts.evaluate or n < 1):
        raise UserError("--eval-only times the evaluation alone: drop --baseline and --no-eval, and use --eval-n >= 1")

    torch.manual_seed(r.seed)  # as kdbench.run: model initialisation
    data = build_data(resolved, hw)
    spec = network_spec(data.info, normalization=student_normalization(resolved, data.info))  # as kdbench.run
    teacher, teacher_weights = _teacher(resolved, opts.runs_dir, spec.num_classes)
    student, method = build_student_and_method(resolved, spec, teacher, data.train_size, hw.device)
    student_weights = "random init"
    if opts.weights is not None:
        load_network_weights(student, opts.weights, what="student")  # a command-line path: from the cwd
        student_weights = str(opts.weights)
    # The conventional loop starts from the same weights: copies taken before anything trains.
    originals = (copy.deepcopy(student), copy.deepcopy(teacher), copy.deepcopy(method)) if opts.baseline else None
    student = place(student, hw)
    if teacher is not None:
        teacher = place(teacher, hw)
    say(
        f"bench {r.name}: {r.method.name} | student {r.student.model} | teacher "
        f"{resolved.to_dict()['teacher']['model'] + ' (' + teacher_weights + ')' if teacher is not None else '-'} | "
        f"{hw.describe()}, {hw.precision}, channels_last {'on' if hw.channels_last else 'off'}, "
        f"compile {'on' if r.train.compile else 'off'} | batch {r.train.batch_size}"
    )

    report: dict[str, Any] = {
        "mode": "eval" if opts.eval_only else "train",
        "recipe": resolved.file,
        "name": r.name,
        "recipe_hash": resolved.hash,
        "device": hw.describe(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "versions": library_versions(hw.device),
        "precision": hw.precision,
        "channels_last": hw.channels_last,
        "compile": r.train.compile,
        "compile_mode": getattr(r.train, "compile_mode", "default") if r.train.compile else None,
        "batch_size": r.train.batch_size,
        "method": r.method.name,
        "student": r.student.model,
        "student_weights": student_weights,
        "teacher": (
            {"model": resolved.to_dict()["teacher"]["model"], "weights": teacher_weights}
            if teacher is not None
            else None
        ),
        "attack": resolved.to_dict()["attack"],
        "dataset": r.data.dataset,
        "image_size": data.info.image_size,
        "train_size": data.train_size,
        "load_average": load_average(),  # at the start; CPU timings shared with other work are noise
    }

    peak = device_peak(hw.device, hw.precision)
    report["peak"] = peak.to_dict()
    report["step"] = None
    report["baseline"] = None
    report["speedup"] = None
    trained = opts.weights is not None  # the evaluated weights are real, not random
    if opts.eval_only:
        say("evaluation only: no training step is timed")
        report["eval"] = evaluation_throughput(student, resolved, hw, n, opts.autoattack, say, trained=trained)
        report["load_average_end"] = load_average()
        return report

    # ---- the fast path: Trainer.step on DeviceLoader batches
    model_flops, fast = _fast_path(resolved, hw, data.train, student, teacher, method, steps, warmup, say)
    # Free the resident split before the baseline runs (a new empty tensor: a slice would keep the storage).
    data.train.images = data.train.images.new_empty((0, *data.train.images.shape[1:]))
    if hw.device.type == "cuda":
        torch.cuda.empty_cache()
    report["step"] = step_block(fast, flops=model_flops, model_flops=model_flops, peak=peak, warmup=warmup)
    say(f"fast path: {report['step']['images_per_second']:.1f} images/s")

    # ---- the conventional loop
    if originals is not None:
        report["baseline"] = _baseline(resolved, hw, originals, opts, steps, warmup, model_flops, peak, say)
        report["speedup"] = report["step"]["images_per_second"] / report["baseline"]["images_per_second"]

    # ---- evaluation throughput
    report["eval"] = None
    if opts.evaluate and n > 0:
        report["eval"] = evaluation_throughput(student, resolved, hw, n, opts.autoattack, say, trained=trained)
    report["load_average_end"] = load_average()
    return report


def _fast_path(
    resolved: ResolvedRecipe,
    hw: Hardware,
    loader: Any,
    student: Network,
    teacher: Network | None,
    method: Method,
    steps: int,
    warmup: int,
    say: Callable[[str], None],
) -> tuple[int, Timing]:
    """Count the FLOPs of one `Trainer.step` (uncompiled), then time ``warmup + steps`` more."""
    r = resolved.recipe
    with tempfile.TemporaryDirectory(prefix="kdbench-bench-") as tmp:
        trainer = Trainer(
            student=student,
            method=method,
            teacher=teacher,
            attack=build_attack(resolved),
            loader=loader,
            train=r.train,
            hardware=hw,
            seed=r.seed,
            store=CheckpointStore(Path(tmp) / "checkpoints"),
            metrics_path=Path(tmp) / "metrics.jsonl",
            progress=make_progress(quiet=True),
        )
        student.train()
        method.train()
        batches = _fast_batches(loader, r.seed)

        def fast_step() -> int:
            epoch, batch, (x, y, index) = next(batches)
            trainer.step(x, y, index, epoch, batch)
            return int(x.shape[0])

        model_flops = count_flops(fast_step)  # one real step, uncompiled; also the first warm-up
        say(f"fast path: {model_flops / 1e9:.2f} GFLOP per step; timing {steps} steps after {warmup} warm-up")
        mode = getattr(r.train, "compile_mode", "default")  # train.compile_mode, where the schema has it
        with compiled([student, teacher], r.train.compile, mode):
            timing = time_steps(fast_step, steps=steps, warmup=warmup, device=hw.device)
    return model_flops, timing


def _baseline(
    resolved: ResolvedRecipe,
    hw: Hardware,
    originals: tuple[Any, Any, Any],
    opts: BenchOptions,
    steps: int,
    warmup: int,
    model_flops: int,
    peak: Peak,
    say: Callable[[str], None],
) -> dict[str, Any]:
    r = resolved.recipe
    student, teacher, method = originals
    # The uint8 split again, on the CPU (the fast path's device copy was freed), with the run's subset.
    source = build_source(resolved)
    split = load_split_cached(source, "train")
    images, labels = split.images, split.labels
    if r.data.train_subset is not None:
        from kdbench.data.loader import balanced_subset

        idx = balanced_subset(labels, r.data.train_subset)
        images, labels = images[idx], labels[idx]
    workers = opts.num_workers if opts.num_workers is not None else default_num_workers()
    loader = conventional_loader(
        images,
        labels,
        batch_size=r.train.batch_size,
        augment=r.data.augment,
        device=hw.device,
        seed=r.seed,
        num_workers=workers,
    )
    loop = ConventionalLoop(
        student=student,
        method=method,
        teacher=teacher,
        attack_config=resolved.attack_config,
        loader=loader,
        train=r.train,
        device=hw.device,
        gradient=opts.baseline_gradient,
    )
    torch.manual_seed(_global_seed(r.seed, 0))
    batches = loop.batches()

    def baseline_step() -> int:
        x, y, index = next(batches)
        loop.step(x, y, index)
        return int(x.shape[0])

    x0, y0, i0 = next(batches)
    flops = count_flops(lambda: loop.step(x0, y0, i0))
    say(f"conventional loop ({workers} workers, attack gradient by {opts.baseline_gradient}): timing {steps} steps")
    timing = time_steps(baseline_step, steps=steps, warmup=warmup, device=hw.device)
    block = step_block(timing, flops=flops, model_flops=model_flops, peak=peak, warmup=warmup)
    block.update(
        {
            "num_workers": workers,
            "pin_memory": hw.device.type == "cuda",
            "precision": "fp32",
            "channels_last": False,
            "attack_gradient": opts.baseline_gradient,
        }
    )
    say(f"conventional loop: {block['images_per_second']:.1f} images/s")
    return block
