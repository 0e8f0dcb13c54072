"""What a run cost: device-seconds, throughput, peak memory and the device's name (result.json ``cost``).

Device-seconds are wall seconds times the number of devices (DDP processes), the unit cloud GPUs are
billed in. Peak memory is the CUDA caching allocator's peak of allocated bytes on CUDA
(``torch.cuda.max_memory_allocated``); on a CPU it is the process's peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``), which also counts the Python interpreter and the decoded dataset.
"""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["cost_record", "device_name", "peak_memory_bytes", "reset_peak_memory"]


def device_name(device: torch.device) -> str:
    """``NVIDIA H200``, or the CPU model (``/proc/cpuinfo``'s model name) for CPU runs."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "process peak RSS"  # Linux reports KiB


def cost_record(
    *,
    device: torch.device,
    world_size: int,
    train_seconds: float,
    train_images: float,
    eval_seconds: float,
    val_seconds: float = 0.0,
    teacher_eval_seconds: float = 0.0,
) -> dict[str, Any]:
    """result.json's ``cost`` table."""
    peak, kind = peak_memory_bytes(device)
    return {
        "device": device_name(device),
        "device_type": device.type,
        "devices": world_size,
        "train_device_seconds": round(train_seconds * world_size, 3),
        "validation_device_seconds": round(val_seconds * world_size, 3),
        "eval_device_seconds": round(eval_seconds, 3),
        "teacher_eval_device_seconds": round(teacher_eval_seconds, 3),
        "total_device_seconds": round((train_seconds + val_seconds) * world_size + eval_seconds, 3),
        "train_images_per_second": round(train_images / train_seconds, 2) if train_seconds > 0 else 0.0,
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
    }
