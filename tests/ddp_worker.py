"""One process of a small data-parallel training job for tests/test_distributed_memory.py.

Run under torchrun (N processes, gloo) or alone; trains a memory-bank method on synthetic images
with the engine's Trainer; every process saves its final student and method state and its RNG state
to ``final-r<rank>.pt``.

The networks have no BatchNorm (unless asked): batch statistics over a process's slice differ from
those over the global batch, which would make N processes differ from one for a reason unrelated to
the banks.

    python tests/ddp_worker.py SPEC_JSON

SPEC keys: "out" (folder), "method", "options" (its config), "attack" (PGD config, or null),
"global_batch", "epochs", "n", "seed"; optional "extra_teachers" (names of the method's additional
teachers, each a frozen network like the teacher), "shared_rng" (one process in the data-parallel
sampling mode), "batchnorm" (networks with BatchNorm), "kill_at": [epoch, batch] (rank 0 SIGKILLs
itself right after writing that checkpoint), "stop_at": [epoch, batch] (rank 0 gets SIGTERM after
that step: the trainer writes a mid-epoch checkpoint).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench import ATTACKS, METHODS, MethodSetup
from kdbench.data.loader import DeviceLoader
from kdbench.engine.checkpoint import CheckpointStore
from kdbench.engine.distributed import Distributed, setup_distributed, teardown_distributed
from kdbench.engine.hardware import resolve_hardware
from kdbench.engine.progress import PlainProgress
from kdbench.engine.trainer import Interrupted, Trainer
from kdbench.models.base import Network, NetworkSpec
from kdbench.recipe import TrainSection
from kdbench.testing import TinyNet

NUM_CLASSES = 4


class PlainNet(Network):
    """Conv -> ReLU -> pool -> linear, no BatchNorm: ``(B, 3, 8, 8) -> (B, 4)`` with ``width``-dim features."""

    def __init__(self, width: int):
        super().__init__()
        self.num_classes, self.feature_dim = NUM_CLASSES, width
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


def main(spec: dict[str, Any]) -> None:
    out = Path(spec["out"])
    world = setup_distributed("cpu")
    hw = resolve_hardware("cpu", "fp32", False, True)
    torch.manual_seed(spec["seed"])
    n, seed = spec["n"], spec["seed"]
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(n) % NUM_CLASSES
    if spec.get("batchnorm"):  # per-process BatchNorm statistics: what a resume must restore per process
        net_spec = NetworkSpec(NUM_CLASSES, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        student, teacher = TinyNet(net_spec, width=4), TinyNet(net_spec, width=3)
    else:
        student, teacher = PlainNet(6), PlainNet(5)
    teacher.eval().requires_grad_(False)
    extra = {name: PlainNet(5).eval().requires_grad_(False) for name in spec.get("extra_teachers", [])}
    cls = METHODS.get(spec["method"])
    setup = MethodSetup(NUM_CLASSES, student.feature_dim, teacher.feature_dim, NUM_CLASSES, n, hw.device)
    method = cls(cls.Config(**spec["options"]), setup)
    if spec.get("shared_rng"):  # the single-process reference of the data-parallel sampling mode
        method.enter_data_parallel(Distributed(), seed)
    attack = ATTACKS.get("pgd")(ATTACKS.get("pgd").Config(**spec["attack"])) if spec.get("attack") else None
    per_process = spec["global_batch"] // world.world_size
    loader = DeviceLoader((images, labels), "cpu", per_process, train=True, seed=seed, rank=world.rank,
                          world_size=world.world_size)  # fmt: skip
    train = TrainSection(
        epochs=spec["epochs"], batch_size=per_process, lr=0.05, device="cpu", deterministic=True, log_every=1
    )
    trainer = Trainer(
        student=student, method=method, teacher=teacher, teachers=extra, attack=attack, loader=loader, train=train,
        hardware=hw, seed=seed, store=CheckpointStore(out / "checkpoints"), metrics_path=out / "metrics.jsonl",
        progress=PlainProgress(io.StringIO()), distributed=world, method_name=spec["method"],
    )  # fmt: skip
    _arm_faults(trainer, world, spec)
    try:
        trainer.fit()
    except Interrupted:
        teardown_distributed()
        sys.exit(130)
    # Every process: its BatchNorm statistics (and RNG stream) are its own.
    state = {"student": student.state_dict(), "method": method.state_dict(), "rng": torch.get_rng_state()}
    torch.save(state, out / f"final-r{world.rank}.pt")
    teardown_distributed(wait=True)


def _arm_faults(trainer: Trainer, world: Distributed, spec: dict[str, Any]) -> None:
    """``kill_at``: SIGKILL rank 0 right after it wrote that checkpoint (nothing can be flushed or
    caught); ``stop_at``: a SIGTERM to rank 0 at that step, which the trainer turns into a checkpoint."""
    kill_at, stop_at = spec.get("kill_at"), spec.get("stop_at")
    if kill_at is not None and world.is_main:
        save = trainer.store.save

        def save_then_die(position: tuple[int, int], state: dict[str, Any]) -> Path:
            path = save(position, state)
            if list(position) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        trainer.store.save = save_then_die  # type: ignore[method-assign]
    if stop_at is not None and world.is_main:
        step = trainer.step

        def step_then_signal(x: Tensor, y: Tensor, index: Tensor, epoch: int, batch: int) -> Any:
            result = step(x, y, index, epoch, batch)
            if [epoch, batch + 1] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return result

        trainer.step = step_then_signal  # type: ignore[method-assign]


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
