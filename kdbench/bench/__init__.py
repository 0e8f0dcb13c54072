"""Speed measurement: ``kdbench bench`` times a recipe's training step and evaluation, counts FLOPs and MFU,
and compares with the conventional training loop of published code. See docs/performance.md."""

from kdbench.bench.baseline import ConventionalLoop, ConventionalPGD, PILDataset, conventional_loader
from kdbench.bench.core import BenchOptions, benchmark
from kdbench.bench.measure import CIFAR_TRAIN_IMAGES, Timing, count_flops, time_steps
from kdbench.bench.peaks import GPU_PEAKS, Peak, device_peak, lookup_gpu_peak, measured_matmul_tflops

__all__ = [
    "CIFAR_TRAIN_IMAGES",
    "GPU_PEAKS",
    "BenchOptions",
    "ConventionalLoop",
    "ConventionalPGD",
    "PILDataset",
    "Peak",
    "Timing",
    "benchmark",
    "conventional_loader",
    "count_flops",
    "device_peak",
    "lookup_gpu_peak",
    "measured_matmul_tflops",
    "time_steps",
]
