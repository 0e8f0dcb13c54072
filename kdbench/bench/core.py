"""Time a recipe's training step and evaluation, count its FLOPs, and compare with the conventional loop.

The components are built exactly as `kdbench.run` builds them (`kdbench.build`, `resolve_hardware`,
the same seeds and memory format), and the step timed is `Trainer.step` on batches of
`DeviceLoader.epoch`, i.e. what ``kdbench run`` executes per batch: the training attack, the teacher's
passes and the student's update. Only speed is measured, so the teacher need not be trained: its
weights come from the teacher recipe's finished run or ``teacher.checkpoint`` when present, else the
teacher architecture is used with its random initialisation (nothing is trained for a benchmark).

Definitions (``B`` images per step, ``t`` mean seconds per timed step, warm-up steps excluded):

    images/s          = B / t
    seconds per epoch = 50,000 / (images/s)                  (a CIFAR training epoch)
    flops_per_step    = FLOPs executed by one step, counted by torch.utils.flop_counter.FlopCounterMode
                        on a real step (matmuls and convolutions of every forward and backward pass:
                        attack, teacher and student; the optimiser's elementwise work is not counted)
    tflops            = flops_per_step / t / 1e12
    mfu               = model_flops_per_step / t / peak      (`kdbench.bench.peaks`)

``model_flops_per_step`` is the fast path's count for both loops: the work the method needs. The
conventional loop executes more (its attack also computes parameter gradients); its own count is its
``flops_per_step``. Timing: CUDA work is asynchronous, so the device is synchronised only before and
after the timed region (per-step times come from CUDA events, which do not block), never inside it.
"""

from __future__ import annotations

import copy
import itertools
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

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
from .peaks import Peak, device_peak

__all__ = [
    "CIFAR_TRAIN_IMAGES",
    "BenchOptions",
    "Timing",
    "benchmark",
    "count_flops",
    "cpu_model",
    "library_versions",
    "time_steps",
]

#: Images in one CIFAR-10/100 training epoch: the unit of "seconds per epoch".
CIFAR_TRAIN_IMAGES = 50_000
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


@dataclass
class Timing:
    """Wall time of the timed steps, each step's time, images processed, and the peak memory."""

    seconds: float
    step_seconds: list[float]
    images: int
    peak_memory_bytes: int
    peak_memory_source: str


# ------------------------------------------------------------------------------------ measuring


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else `platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: Distributions whose versions a report records (those a timing or an evaluation depends on).
VERSIONED = ("torch", "torchvision", "timm", "numpy", "pydantic", "pyautoattack")


def library_versions(device: torch.device) -> dict[str, str | None]:
    """Versions of the libraries a measurement depends on, and CUDA's, cuDNN's and the GPU's (None where absent)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    found["cudnn"] = str(cudnn) if cudnn is not None else None
    found["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return found


class _GlobalOnly:
    """A stand-in for FlopCounterMode's per-module tracker that attributes every FLOP to "Global".

    The tracker's multi-grad hooks make ``torch.autograd.grad`` with respect to a leaf input fail
    ("A leaf node was passed to _will_engine_execute_node", pytorch/pytorch#131753), and that is how
    kdbench's attacks take their input gradients. Only the total is needed here.
    """

    parents: ClassVar[set[str]] = {"Global"}

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _conv_backward_flop(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: list[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of ``aten.convolution_backward``: each requested gradient costs what the forward convolution costs.

    The input gradient is a transposed convolution and the weight gradient a convolution of the input
    with the output gradient, each with the forward's multiply-adds. torch's own formula counts the
    weight gradient of a grouped convolution ``groups`` times too high (a depthwise 3x3 conv of C channels
    is counted C times over; torch 2.14, see pytorch/pytorch#183405), which inflates MobileNetV2's count
    several-fold.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)  # w_shape holds C_in / groups
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls and convolutions ``fn()`` runs, forward and backward (FlopCounterMode)."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        fn()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], int], *, steps: int, warmup: int, device: torch.device) -> Timing:
    """Run ``step`` (which returns the images it processed) ``warmup`` times untimed, then ``steps`` times timed.

    CUDA: synchronise, reset the peak-memory counter, record an event pair around each step (no
    host sync), synchronise at the end; the peak is ``torch.cuda.max_memory_allocated`` over the timed
    steps. CPU: ``perf_counter`` around each step; the peak is the process's maximum resident set
    size (``getrusage``), a rough upper bound that includes everything the process ever held.
    """
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    events: list[tuple[Any, Any]] = []
    per_step: list[float] = []
    images = 0
    tic = time.perf_counter()
    for _ in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            images += step()
            end.record()
            events.append((start, end))
        else:
            t0 = time.perf_counter()
            images += step()
            per_step.append(time.perf_counter() - t0)
    _sync(device)
    seconds = time.perf_counter() - tic
    if cuda:
        per_step = [s.elapsed_time(e) / 1e3 for s, e in events]
        peak, source = int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    else:
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        scale = 1 if platform.system() == "Darwin" else 1024
        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
        source = "cpu maxrss of the whole process (rough)"
    return Timing(seconds, per_step, images, peak, source)


def _step_block(timing: Timing, *, flops: int, model_flops: int, peak: Peak, warmup: int) -> dict[str, Any]:
    steps = len(timing.step_seconds)
    mean = timing.seconds / steps
    ips = timing.images / timing.seconds
    return {
        "images_per_second": ips,
        "seconds_per_epoch": CIFAR_TRAIN_IMAGES / ips,
        "step_ms": mean * 1e3,
        "step_ms_median": statistics.median(timing.step_seconds) * 1e3,
        "steps": steps,
        "warmup": warmup,
        "images_per_step": timing.images / steps,
        "flops_per_step": flops,
        "model_flops_per_step": model_flops,
        "tflops": flops / mean / 1e12,
        "mfu": model_flops / mean / (peak.tflops * 1e12),
        "peak_memory_bytes": timing.peak_memory_bytes,
        "peak_memory_source": timing.peak_memory_source,
    }


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
        "load_average": _load_average(),  # at the start; CPU timings shared with other work are noise
    }

    peak = device_peak(hw.device, hw.precision)
    report["peak"] = peak.to_dict()
    report["step"] = None
    report["baseline"] = None
    report["speedup"] = None
    if opts.eval_only:
        say("evaluation only: no training step is timed")
        report["eval"] = _evaluation(student, resolved, hw, n, opts.autoattack, say, trained=opts.weights is not None)
        report["load_average_end"] = _load_average()
        return report

    # ---- the fast path: Trainer.step on DeviceLoader batches
    model_flops, fast = _fast_path(resolved, hw, data.train, student, teacher, method, steps, warmup, say)
    # Free the resident split before the baseline runs (a new empty tensor: a slice would keep the storage).
    data.train.images = data.train.images.new_empty((0, *data.train.images.shape[1:]))
    if hw.device.type == "cuda":
        torch.cuda.empty_cache()
    report["step"] = _step_block(fast, flops=model_flops, model_flops=model_flops, peak=peak, warmup=warmup)
    say(f"fast path: {report['step']['images_per_second']:.1f} images/s")

    # ---- the conventional loop
    if originals is not None:
        report["baseline"] = _baseline(resolved, hw, originals, opts, steps, warmup, model_flops, peak, say)
        report["speedup"] = report["step"]["images_per_second"] / report["baseline"]["images_per_second"]

    # ---- evaluation throughput
    report["eval"] = None
    if opts.evaluate and n > 0:
        report["eval"] = _evaluation(student, resolved, hw, n, opts.autoattack, say, trained=opts.weights is not None)
    report["load_average_end"] = _load_average()
    return report


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages of the machine (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


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
    block = _step_block(timing, flops=flops, model_flops=model_flops, peak=peak, warmup=warmup)
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


def _evaluation(
    student: Network,
    resolved: ResolvedRecipe,
    hw: Hardware,
    n: int,
    autoattack: bool,
    say: Callable[[str], None],
    *,
    trained: bool = False,
) -> dict[str, Any]:
    """Throughput of PGD-20 and (optionally) standard AutoAttack on the first ``n`` test images.

    ``trained``: the student's weights were loaded (``--weights``), so the AutoAttack time is that of a
    real model, not the lower bound of a barely trained one.
    """
    from kdbench.evaluation import evaluate
    from kdbench.evaluation.autoattack import require_autoattack

    r = resolved.recipe
    test = load_split_cached(build_source(resolved), "test")
    n = min(n, len(test.labels))
    attacks = ["clean", "pgd20"]
    skipped = None
    if autoattack:
        try:
            require_autoattack()
            attacks.append("autoattack")
        except UserError as exc:
            skipped = str(exc)
    say(f"evaluation: {', '.join(attacks)} on {n} test images")
    net = student.to(memory_format=torch.contiguous_format)  # as kdbench.run evaluates
    result = evaluate(
        net,
        test.images[:n],
        test.labels[:n],
        attacks,
        eps=r.eval.eps,
        norm=r.eval.norm,
        batch_size=r.eval.batch_size,
        device=hw.device,
        seed=r.seed,
        sanity=False,
    )

    def block(name: str) -> dict[str, Any]:
        seconds = result.seconds[name]
        return {
            "seconds": seconds,
            "images_per_second": n / seconds if seconds > 0 else None,
            "seconds_per_10000": seconds * 10_000 / n,
            "accuracy": result.robust.get(name) if name != "clean" else result.clean_acc,
        }

    out: dict[str, Any] = {
        "n": n,
        "batch_size": r.eval.batch_size,
        "model": "student",
        "clean_acc": result.clean_acc,
        "clean": block("clean"),
        "pgd20": block("pgd20"),
        "autoattack": block("autoattack") if "autoattack" in attacks else None,
        "note": "AutoAttack attacks only points classified correctly and stops on a point once it is broken, "
        "so its time grows with the model's clean and robust accuracy; "
        + (
            "the evaluated weights were loaded with --weights"
            if trained
            else "the benchmarked student is barely trained, which makes this a lower bound"
        ),
    }
    if skipped is not None:
        out["autoattack_skipped"] = skipped
    return out
