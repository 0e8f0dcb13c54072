"""What a run will cost before it starts: FLOPs counted on one image, divided by the device's rate.

The count is a model of the training step, not a measurement of it (``kdbench bench`` measures):

    F_s, F_t       forward FLOPs of one image through the student / the teacher, counted by
                   torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls)
    training image 3 F_s per student view (forward + backward = 3 forward passes; two views, clean
                   and adversarial, when the method attacks)
                   + k * 2 F_s for a k-step training attack (forward + input gradient per step)
                   + F_t per teacher view (one, or two when the method attacks)
    evaluation     per test image: clean F_s; FGSM 3 F_s; PGD-k (2k + 1) F_s; CW-inf 61 F_s;
                   AutoAttack standard ~ 4850 F_s (APGD-CE 100 + APGD-T 9 x 100 iterations at 2 F_s,
                   FAB-T 9 x 100 at 3 F_s, Square 5000 queries at F_s, on the ~half of the points a
                   robust model keeps; Croce & Hein 2020) and its custom APGD-CE + APGD-T version ~ 1000 F_s
    seconds        FLOPs / (measured matmul rate of the device x `EFFICIENCY`)

The measured matmul rate is that of `kdbench.bench.peaks.measured_matmul_tflops` (float32 on a CPU,
the run's precision on a GPU). Convolutions on 32x32 images reach only a part of it; `EFFICIENCY`
was calibrated on this project's 2-core CPU against ``kdbench bench`` (quickstart recipe: the model
came within a factor of 2 of the measured step). Treat the result as an order of magnitude: it tells
a 5-minute run from a 5-day one, which is what a user needs before pressing enter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from kdbench._registry import split_variant
from kdbench.build import build_network, build_source, network_spec
from kdbench.config import StrictModel
from kdbench.method import Method
from kdbench.models.base import NetworkSpec
from kdbench.recipe import ResolvedRecipe

__all__ = [
    "CPU_WARN_SECONDS",
    "EFFICIENCY",
    "RunCost",
    "attack_passes",
    "estimate_run",
    "format_duration",
    "forward_flops",
    "warn_if_long",
]

#: Fraction of the measured matmul rate that a training step's convolutions reach (see the module doc).
EFFICIENCY = {"cpu": 0.35, "cuda": 0.25}
#: Above this (3 hours) a CPU run gets a warning before it starts.
CPU_WARN_SECONDS = 3 * 3600.0
#: Published split sizes of the built-in datasets (train, test), read without decoding anything.
_SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "stl10": (5_000, 8_000)}
#: Forward passes per evaluated image, as multiples of F_s (module doc).
_EVAL_PASSES = {"clean": 1.0, "fgsm": 3.0, "cw": 61.0, "autoattack": 4850.0, "autoattack_custom": 1000.0}


@dataclass(frozen=True)
class RunCost:
    """The estimate for one recipe (its teacher chain not included; see `estimate_chain`)."""

    name: str
    epochs: int
    train_images: int | None  # None: the dataset's size is unknown before decoding it
    eval_images: int | None
    train_flops: float | None
    eval_flops: float | None
    device: str
    tflops: float  # the rate the seconds are computed from (measured rate x efficiency)

    @property
    def train_seconds(self) -> float | None:
        return None if self.train_flops is None else self.train_flops / (self.tflops * 1e12)

    @property
    def eval_seconds(self) -> float | None:
        return None if self.eval_flops is None else self.eval_flops / (self.tflops * 1e12)

    @property
    def seconds(self) -> float | None:
        if self.train_seconds is None or self.eval_seconds is None:
            return None
        return self.train_seconds + self.eval_seconds

    def describe(self) -> str:
        """``100 epochs x 50000 images, ~3.2 d training + 4.1 h evaluation (cpu)``."""
        images = "?" if self.train_images is None else str(self.train_images)
        work = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} x {images} images"
        if self.train_seconds is None or self.eval_seconds is None:
            return f"{work}, time not estimated (dataset size unknown before decoding)"
        return (
            f"{work}, ~{format_duration(self.train_seconds)} training + "
            f"~{format_duration(self.eval_seconds)} evaluation ({self.device})"
        )


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``, ``2.1 d``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@functools.lru_cache(maxsize=64)
def _forward_flops_cached(name: str, config_json: str, config_type: type[StrictModel], spec: NetworkSpec) -> int:
    config = config_type.model_validate_json(config_json)
    net = build_network(name, config, spec).eval()
    x = torch.rand(1, 3, spec.image_size, spec.image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return int(counter.get_total_flops())


def forward_flops(name: str, config: StrictModel, spec: NetworkSpec) -> int:
    """FLOPs of one forward pass of one image through the registered model ``name`` (counted, on the CPU)."""
    return _forward_flops_cached(name, config.model_dump_json(), type(config), spec)


def attack_passes(resolved: ResolvedRecipe) -> int:
    """Steps of the training attack, 0 when the method trains on clean images only."""
    if resolved.method_class.attack_objective is Method.attack_objective:
        return 0
    return int(getattr(resolved.attack_config, "steps", 1))


@functools.lru_cache(maxsize=4)
def _device_tflops(device_type: str, precision: str) -> float:
    from kdbench.bench.peaks import measured_matmul_tflops

    device = torch.device(device_type)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size = 4096 if device_type == "cuda" else 1024
    return measured_matmul_tflops(device, dtype, size=size) * EFFICIENCY.get(device_type, 0.3)


def _eval_passes(name: str) -> float:
    if name in _EVAL_PASSES:
        return _EVAL_PASSES[name]
    if name.startswith("pgd") and name[3:].isdigit():
        return 2 * int(name[3:]) + 1.0
    return 1.0


def _sizes(resolved: ResolvedRecipe) -> tuple[int | None, int | None]:
    data = resolved.recipe.data
    base = split_variant(data.dataset)[0]
    train, test = _SPLIT_SIZES.get(base, (None, None))
    train = getattr(resolved.data_config, "train_size", train)
    test = getattr(resolved.data_config, "test_size", test)
    if data.train_subset is not None:
        train = data.train_subset if train is None else min(train, data.train_subset)
    if data.test_subset is not None:
        test = data.test_subset if test is None else min(test, data.test_subset)
    if resolved.recipe.eval.n_examples is not None:
        test = resolved.recipe.eval.n_examples if test is None else min(test, resolved.recipe.eval.n_examples)
    return train, test


def estimate_run(resolved: ResolvedRecipe, device_type: str | None = None) -> RunCost:
    """FLOP-count estimate of training and evaluating ``resolved`` (module doc) on its device."""
    r = resolved.recipe
    if device_type is None:
        device_type = (
            "cuda" if r.train.device == "cuda" or (r.train.device == "auto" and torch.cuda.is_available()) else "cpu"
        )
    precision = r.train.precision if r.train.precision != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    info = build_source(resolved).info()
    spec = network_spec(info)
    f_student = forward_flops(r.student.model, resolved.student_config, spec)
    f_teacher = 0
    # A RobustBench zoo teacher is not a registered model: its forward pass is not counted (the estimate
    # is then a lower bound), as building it would need robustbench and its weights.
    if r.teacher is not None and resolved.teacher_config is not None and r.teacher.zoo_name is None:
        teacher_model = resolved.to_dict()["teacher"]["model"]
        f_teacher = forward_flops(teacher_model, resolved.teacher_config, spec)
    steps = attack_passes(resolved)
    views = 2 if steps else 1
    per_train_image = views * 3 * f_student + steps * 2 * f_student + views * f_teacher
    per_eval_image = sum(_eval_passes(name) for name in {"clean", *r.eval.attacks}) * f_student
    train_images, eval_images = _sizes(resolved)
    # The loader drops the short last batch: whole batches only.
    seen = None if train_images is None else (train_images // r.train.batch_size) * r.train.batch_size
    return RunCost(
        name=r.name,
        epochs=r.train.epochs,
        train_images=train_images,
        eval_images=eval_images,
        train_flops=None if seen is None else float(per_train_image) * seen * r.train.epochs,
        eval_flops=None if eval_images is None else float(per_eval_image) * eval_images,
        device=device_type,
        tflops=_device_tflops(device_type, precision),
    )


def warn_if_long(total_seconds: float, device: str) -> str | None:
    """The warning printed before a CPU run estimated above `CPU_WARN_SECONDS`, else None."""
    if device != "cpu" or total_seconds <= CPU_WARN_SECONDS:
        return None
    return (
        f"warning: this run is estimated at ~{format_duration(total_seconds)} on this CPU; "
        "scale it down (--set train.epochs=..., --set data.train_subset=..., --teacher-set ...) "
        "or run it on a GPU"
    )
