"""Measuring instruments of ``kdbench bench``: step timing, FLOP counting, and the machine's description.

Definitions (``B`` images per step, ``t`` mean seconds per timed step, warm-up steps excluded):

    images/s          = B / t
    seconds per epoch = 50,000 / (images/s)                  (a CIFAR training epoch)
    flops_per_step    = FLOPs executed by one step, counted by torch.utils.flop_counter.FlopCounterMode
                        on a real step (matmuls and convolutions of every forward and backward pass:
                        attack, teacher and student; the optimiser's elementwise work is not counted)
    tflops            = flops_per_step / t / 1e12
    mfu               = model_flops_per_step / t / peak      (`kdbench.bench.peaks`)

Timing: CUDA work is asynchronous, so the device is synchronised only before and after the timed region
(per-step times come from CUDA events, which do not block), never inside it.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from kdbench._errors import UserError

from .peaks import Peak

__all__ = [
    "CIFAR_TRAIN_IMAGES",
    "VERSIONED",
    "Timing",
    "count_flops",
    "cpu_model",
    "library_versions",
    "load_average",
    "step_block",
    "time_steps",
]

#: Images in one CIFAR-10/100 training epoch: the unit of "seconds per epoch".
CIFAR_TRAIN_IMAGES = 50_000


@dataclass
class Timing:
    """Wall time of the timed steps, each step's time, images processed, and the peak memory."""

    seconds: float
    step_seconds: list[float]
    images: int
    peak_memory_bytes: int
    peak_memory_source: str


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


def step_block(timing: Timing, *, flops: int, model_flops: int, peak: Peak, warmup: int) -> dict[str, Any]:
    """The report's block for timed steps: throughput, epoch time, FLOPs, TFLOP/s, MFU and peak memory."""
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


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages of the machine (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None
