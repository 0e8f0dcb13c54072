"""The CUDA test tier: fixtures and builders shared by tests/gpu/.

Every test here exercises a device path of the fast engine (bf16 autocast, channels_last, the step
without host synchronisation, torch.compile and CUDA graphs, AutoAttack, the device-resident loader).
Tests that take the ``device`` fixture run twice: on the CPU (in the default suite, small sizes, so the
logic is checked everywhere) and on CUDA (marked ``gpu``; skipped with the reason below where no CUDA
device exists). ``pytest -m gpu`` selects the CUDA half alone: that is what benchmarks/gpu/run.py runs
on the GPU machine, with the sizes of real training (ResNet-18, batch 128) instead of the CPU's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device: the gpu tier runs on a GPU machine (bash benchmarks/gpu/run.sh; docs/performance.md)"
#: Mark for tests that only mean something on CUDA (sync counting by the CUDA runtime, CUDA graphs).
cuda_only = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)]
#: Devices a test body runs on: the CPU always, CUDA in the gpu tier.
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only, id="cuda")]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class Size:
    """Model and batch per device: real training sizes on CUDA, a few seconds' worth on the CPU."""

    model: str
    batch: int
    image_size: int
    train_size: int


def size_for(device: str) -> Size:
    if device == "cuda":
        return Size("resnet18", 128, 32, 1024)
    return Size("resnet8", 16, 16, 64)


@dataclass
class Built:
    """A `Trainer` over the fake dataset, built exactly as ``kdbench run`` builds its components."""

    trainer: Any  # kdbench.engine.trainer.Trainer
    loader: Any  # kdbench.data.loader.DeviceLoader
    hardware: Any  # kdbench.engine.hardware.Hardware

    def batches(self) -> Iterator[tuple[int, int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """``(epoch, batch, (x, y, index))`` epoch after epoch, the global RNG seeded per epoch as the trainer does."""
        from kdbench.engine.trainer import global_seed

        epoch = 0
        while True:
            torch.manual_seed(global_seed(0, epoch))
            for batch, item in enumerate(self.loader.epoch(epoch)):
                yield epoch, batch, item
            epoch += 1

    def run_steps(self, n: int, source: Iterator[Any] | None = None) -> list[dict[str, torch.Tensor]]:
        """``n`` training steps; returns each step's loss terms (device tensors, nothing read back)."""
        it = source if source is not None else self.batches()
        out = []
        for _ in range(n):
            epoch, batch, (x, y, index) = next(it)
            terms, _logits, _attacked = self.trainer.step(x, y, index, epoch, batch)
            out.append(terms)
        return out


def build(
    tmp_path: Path,
    device: str,
    method: str,
    *,
    model: str | None = None,
    batch: int | None = None,
    steps: int = 2,
    precision: str = "auto",
    channels_last: bool | None = None,
    seed: int = 0,
) -> Built:
    """The trainer of ``method`` on ``device`` (teacher: the same architecture, random weights, frozen)."""
    from kdbench import METHODS
    from kdbench.bench.core import _teacher
    from kdbench.build import build_attack, build_data, build_student_and_method, network_spec, place
    from kdbench.engine.checkpoint import CheckpointStore
    from kdbench.engine.hardware import resolve_hardware
    from kdbench.engine.progress import make_progress
    from kdbench.engine.trainer import Trainer
    from kdbench.recipe import load_recipes

    size = size_for(device)
    model = model or size.model
    batch = batch or size.batch
    data = (
        f'[data]\ndataset = "fake"\noptions = {{train_size = {size.train_size}, test_size = 64, '
        f"image_size = {size.image_size}}}\n"
    )
    teacher = f'name = "gpu-tier-teacher"\n{data}[student]\nmodel = "{model}"\n[method]\nname = "natural"\n'
    needs_teacher = METHODS.get(method).needs_teacher
    recipe = (
        f'name = "gpu-tier-{method}"\nseed = {seed}\n{data}'
        + ('[teacher]\nrecipe = "teacher.toml"\n' if needs_teacher else "")
        + f'[student]\nmodel = "{model}"\n[method]\nname = "{method}"\n[attack]\nsteps = {steps}\n'
        + f'[train]\ndevice = "{device}"\nprecision = "{precision}"\nbatch_size = {batch}\n'
    )
    if channels_last is not None:
        recipe += f"channels_last = {'true' if channels_last else 'false'}\n"
    tmp_path.mkdir(parents=True, exist_ok=True)  # callers may pass a sub-folder of their tmp_path
    (tmp_path / "teacher.toml").write_text(teacher)
    path = tmp_path / f"{method}.toml"
    path.write_text(recipe)
    resolved = load_recipes(path)[0]
    r = resolved.recipe
    hw = resolve_hardware(r.train.device, r.train.precision, r.train.channels_last, r.train.deterministic)
    torch.manual_seed(seed)
    bundle = build_data(resolved, hw)
    spec = network_spec(bundle.info)
    net_teacher, _ = _teacher(resolved, tmp_path / "runs", spec.num_classes)
    student, meth = build_student_and_method(resolved, spec, net_teacher, bundle.train_size, hw.device)
    student = place(student, hw)
    if net_teacher is not None:
        net_teacher = place(net_teacher, hw)
    trainer = Trainer(
        student=student,
        method=meth,
        teacher=net_teacher,
        attack=build_attack(resolved),
        loader=bundle.train,
        train=r.train,
        hardware=hw,
        seed=seed,
        store=CheckpointStore(tmp_path / "checkpoints"),
        metrics_path=tmp_path / "metrics.jsonl",
        progress=make_progress(quiet=True),
    )
    student.train()
    meth.train()
    return Built(trainer, bundle.train, hw)
