"""The device's peak arithmetic rate, the denominator of model FLOPs utilisation (MFU).

    MFU = (FLOPs of one training step) / (seconds per step) / (peak FLOP/s of the device)

Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022, appendix B, define MFU with
the FLOPs the model needs (not those an implementation happens to execute) over the hardware's peak.
The peak comes from `GPU_PEAKS` (vendors' datasheets, dense, no structured sparsity) for the GPUs it
knows, matched on a substring of ``torch.cuda.get_device_name``; for anything else (every CPU) from
`measured_matmul_tflops`, the rate of a large square matrix product on random data. The measured rate
is always reported beside the table's: on an H100 SXM the datasheet's 989 bf16 TFLOP/s compare with
about 800 measured for an 8192^3 product, so an MFU against the table is the stricter number.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["GPU_PEAKS", "GpuPeak", "Peak", "device_peak", "lookup_gpu_peak", "measured_matmul_tflops"]


@dataclass(frozen=True)
class GpuPeak:
    """Dense peak rates (TFLOP/s) of one GPU model: bf16 and tf32 on the tensor cores, fp32 on the ALUs."""

    match: str  # lower-case substring of torch.cuda.get_device_name
    label: str
    bf16: float
    tf32: float
    fp32: float


#: Datasheet dense peaks, most specific names first (``"h100 pcie"`` before ``"h100"``). Sources: NVIDIA's
#: H100 and H200 datasheets (SXM5 / PCIe / NVL), the A100 datasheet (same rates for SXM4 and PCIe),
#: the L40S datasheet and the Ada Lovelace architecture whitepaper (RTX 4090, bf16 with fp32
#: accumulation). Sparse figures are halved to dense.
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("h100 pcie", "H100 PCIe", bf16=756.0, tf32=378.0, fp32=51.2),
    GpuPeak("h100 nvl", "H100 NVL", bf16=835.5, tf32=417.5, fp32=60.0),
    GpuPeak("h100", "H100 SXM", bf16=989.4, tf32=494.7, fp32=66.9),
    GpuPeak("h200 nvl", "H200 NVL", bf16=835.5, tf32=417.5, fp32=60.0),
    GpuPeak("h200", "H200 SXM", bf16=989.4, tf32=494.7, fp32=66.9),
    GpuPeak("a100", "A100", bf16=312.0, tf32=156.0, fp32=19.5),
    GpuPeak("l40s", "L40S", bf16=362.1, tf32=183.0, fp32=91.6),
    GpuPeak("rtx 4090", "RTX 4090", bf16=165.2, tf32=82.6, fp32=82.6),
)


@dataclass(frozen=True)
class Peak:
    """The peak used for MFU: ``tflops`` (TFLOP/s), where it came from, and the measured matmul rate."""

    tflops: float
    source: str  # "table: H100 SXM bf16 dense" | "measured: fp32 matmul 1024^3"
    dtype: str  # "bf16" | "tf32" | "fp32"
    measured_tflops: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lookup_gpu_peak(device_name: str) -> GpuPeak | None:
    """The `GPU_PEAKS` entry whose ``match`` is a substring of ``device_name`` (case-insensitive), or None."""
    name = device_name.lower()
    return next((entry for entry in GPU_PEAKS if entry.match in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_matmul_tflops(
    device: torch.device, dtype: torch.dtype, *, size: int | None = None, repeats: int = 5
) -> float:
    """The median rate (TFLOP/s) of ``size x size @ size x size`` products on random data (2 size^3 FLOPs each).

    Random operands, not zeros (zeros run faster on some GPUs); two warm-up products first; CUDA
    timed with events, CPU with the wall clock. Default size: 8192 on CUDA, 1024 on the CPU. Uses its
    own generator, so the global RNG is untouched.
    """
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    _sync(device)
    seconds: list[float] = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            tic = time.perf_counter()
            torch.mm(a, b)
            seconds.append(time.perf_counter() - tic)
    return 2 * n**3 / max(statistics.median(seconds), 1e-12) / 1e12


def _dtype_name(device: torch.device, precision: str) -> str:
    """The arithmetic the step's convolutions run in: bf16, tf32 (CUDA fp32 with TF32 allowed) or fp32."""
    if precision == "bf16":
        return "bf16"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"  # kdbench.engine.hardware allows TF32 on CUDA unless the run is deterministic
    return "fp32"


def device_peak(device: torch.device, precision: str, *, measure: bool = True) -> Peak:
    """The peak for an MFU of a step run at ``precision`` ("bf16" | "fp32") on ``device``.

    CUDA GPUs in `GPU_PEAKS` use the datasheet rate of the step's arithmetic; other devices the
    measured matmul rate (bf16 for bf16 runs, float32 otherwise, with the backend's TF32 setting).
    """
    device = torch.device(device)
    kind = _dtype_name(device, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size = 8192 if device.type == "cuda" else 1024
    measured = measured_matmul_tflops(device, dtype, size=size) if measure else None
    measured_label = f"{'bf16' if precision == 'bf16' else 'fp32'} matmul {size}^3"
    if device.type == "cuda":
        entry = lookup_gpu_peak(torch.cuda.get_device_name(device))
        if entry is not None:
            return Peak(getattr(entry, kind), f"table: {entry.label} {kind} dense", kind, measured)
    if measured is None:
        measured = measured_matmul_tflops(device, dtype, size=size)
    return Peak(measured, f"measured: {measured_label}", kind, measured)
