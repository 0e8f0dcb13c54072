"""The loop of an evaluation: the clean model and every attack over every chunk of the examples, batch by batch.

`AttackLoop` computes per-example outcomes, ``(N,)`` bools on the CPU: ``argmax f(x) == y`` for the clean
model, ``argmax f(x') == y`` for an attack's x'. The examples are cut into the chunks of
`kdbench.evaluation.sharding` (`plan_runner`); each attack seeds chunk k with ``chunk_seed(seed, k)``
before its first batch, so a chunk's outcomes depend on that chunk alone, and a `ChunkRunner` shares the
chunks among the processes of a data-parallel job, merges their outcomes and, with a progress store
(`kdbench.evaluation.progress_store`), reads back the chunks an interrupted evaluation finished and stores
every new one. Gradient attacks run on batches of ``batch_size``; AutoAttack on a whole chunk, batching
itself. A gradient attack reports, at least every `PROGRESS_SECONDS`, the examples this process has done,
their robust accuracy so far and the time.

The loop runs inside `kdbench.evaluation.isolation` (model frozen, RNG forked); `kdbench.evaluation.evaluate`
sets it up, adds the sanity checks and assembles the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.attacks.base import Attack, ModelFn, Objective
from kdbench.attacks.threat import Norm
from kdbench.engine.distributed import Distributed
from kdbench.evaluation.autoattack import AUTOATTACK_VERSIONS, run_autoattack
from kdbench.evaluation.isolation import seed_generators
from kdbench.evaluation.progress_store import ChunkOutcome, EvalProgressStore, progress_key
from kdbench.evaluation.sanity import Flag, as_flag
from kdbench.evaluation.sharding import Chunk, ChunkRunner, check_world, chunk_seed, default_chunk_size, plan_chunks
from kdbench.models.base import ModelOutput

__all__ = ["PROGRESS_SECONDS", "AttackLoop", "AttackOutcome", "clock", "plan_runner", "predict_correct"]

#: Seconds between the per-attack progress lines of the loop.
PROGRESS_SECONDS = 10.0


def clock(device: torch.device) -> float:
    """Wall time, after the device's queued work finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def predict_correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``argmax model(x) == y``: ``(B,)`` bool, without gradients."""
    with torch.no_grad():
        logits: Tensor = model(x)
        return logits.argmax(dim=1) == y


def _model_fn(model: nn.Module) -> ModelFn:
    """The model as attacks see it: `Network.forward_all`, or logits wrapped in a `ModelOutput`."""
    # getattr, not isinstance(model, Network): a torch.compile wrapper forwards the attribute too.
    forward_all: ModelFn | None = getattr(model, "forward_all", None)
    if callable(forward_all):
        return forward_all

    def model_fn(x: Tensor) -> ModelOutput:
        logits = model(x)
        return ModelOutput(logits, logits)

    return model_fn


def plan_runner(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    settings: dict[str, Any],
    chunk_size: int,
    device: torch.device,
    world: Distributed,
    store: EvalProgressStore | None,
    on_message: Callable[[str], None] | None,
) -> tuple[ChunkRunner, int]:
    """The `ChunkRunner` of an evaluation of ``x: (N, C, H, W)`` and the chunk size it uses.

    ``chunk_size`` 0 means `default_chunk_size` (one chunk alone, one per process under torchrun). With a
    ``store``, rank 0 opens the progress of this model, these examples and ``settings`` (the evaluation's
    numbers-changing arguments) plus the chunk size and the device type: chunks stored under another key
    are never read back.
    """
    n = x.shape[0]
    check_world(n, world)
    size = chunk_size if chunk_size > 0 else default_chunk_size(n, world.world_size)
    chunks = plan_chunks(n, size)
    if store is not None and world.is_main:
        store.open(progress_key(model, x, y, {**settings, "chunk_size": size, "device": device.type}))
    return ChunkRunner(chunks, world, store, on_message=on_message), size


@dataclass
class AttackOutcome:
    """One attack over every example: ``correct (N,)`` bool, robust *and* clean correct; its flags; wall time."""

    correct: Tensor
    flags: list[Flag]
    seconds: float


class AttackLoop:
    """The clean model and the attacks over the chunks of ``runner`` (see the module docstring).

    ``net``: the frozen model; ``x: (N, C, H, W)`` float in [0, 1] and ``y: (N,)``, on any device (each
    batch is moved to ``device``); ``on_progress``: None on every process but rank 0.
    """

    def __init__(
        self,
        net: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        eps: float,
        norm: Norm,
        batch_size: int,
        seed: int,
        device: torch.device,
        runner: ChunkRunner,
        world: Distributed,
        on_progress: Callable[[str], None] | None,
    ):
        self.net, self.x, self.y = net, x, y
        self.model_fn = _model_fn(net)
        self.eps, self.norm, self.batch_size, self.seed, self.device = eps, norm, batch_size, seed, device
        self.runner, self.world, self.on_progress = runner, world, on_progress
        self.n = x.shape[0]

    def _batches(self, c: Chunk) -> Iterator[tuple[int, int]]:
        return ((a, min(a + self.batch_size, c.stop)) for a in range(c.start, c.stop, self.batch_size))

    def clean(self) -> tuple[Tensor, float]:
        """The clean correctness ``(N,)`` bool and its wall time."""
        t0 = clock(self.device)

        def clean_chunk(c: Chunk) -> ChunkOutcome:
            out = torch.empty(c.size, dtype=torch.bool)
            for a, b in self._batches(c):
                xb, yb = self.x[a:b].to(self.device), self.y[a:b].to(self.device)
                out[a - c.start : b - c.start] = predict_correct(self.net, xb, yb).cpu()
            return ChunkOutcome(out)

        clean, _ = self.runner.run("clean", clean_chunk)
        return clean, clock(self.device) - t0

    def attack(
        self, name: str, gradient_attack: tuple[Attack, Callable[[Tensor], Objective]] | None, clean: Tensor
    ) -> AttackOutcome:
        """Attack ``name`` over every chunk: ``gradient_attack`` (the attack and its objective factory), or
        None for an AutoAttack name; ``clean``: the clean correctness, ANDed in (robust <= clean per sample)."""
        t0 = clock(self.device)
        here = {"done": 0, "robust": 0, "shown": t0}  # this process's examples, for the progress lines

        def attack_chunk(c: Chunk) -> ChunkOutcome:
            seed_generators(self.device, chunk_seed(self.seed, c.index))
            if gradient_attack is None:
                result = run_autoattack(
                    self.net,
                    self.x[c.start : c.stop],
                    self.y[c.start : c.stop],
                    eps=self.eps,
                    norm=self.norm,
                    batch_size=self.batch_size,
                    device=self.device,
                    seed=chunk_seed(self.seed, c.index),
                    version=AUTOATTACK_VERSIONS[name],
                    log=self.on_progress,
                )
                return ChunkOutcome(result.correct.cpu(), tuple(result.flags))
            attack, objective = gradient_attack
            out = torch.empty(c.size, dtype=torch.bool)
            for a, b in self._batches(c):
                xb, yb = self.x[a:b].to(self.device), self.y[a:b].to(self.device)
                x_adv = attack.perturb(self.model_fn, xb, objective(yb))
                out[a - c.start : b - c.start] = predict_correct(self.net, x_adv, yb).cpu()
                here["done"] += b - a
                here["robust"] += int((out[a - c.start : b - c.start] & clean[a:b]).sum())
                self._progress(name, here, t0)
            return ChunkOutcome(out)

        robust_correct, chunk_flags = self.runner.run(name, attack_chunk)
        flags = [as_flag(text, check="autoattack") for text in chunk_flags]
        correct = robust_correct & clean
        return AttackOutcome(correct, flags, clock(self.device) - t0)

    def _progress(self, name: str, here: dict[str, Any], t0: float) -> None:
        """A progress line when `PROGRESS_SECONDS` passed since the last one, or when the last batch is done."""
        now = time.perf_counter()
        last = not self.world.enabled and here["done"] == self.n
        if self.on_progress is not None and (now - here["shown"] >= PROGRESS_SECONDS or last):
            here["shown"] = now
            so_far = here["robust"] / here["done"]
            total = f"/{self.n}" if not self.world.enabled else " (this process)"
            done = f"{here['done']}{total} examples"
            self.on_progress(f"{name}: {done}, robust accuracy {so_far:.4f}, {now - t0:.0f} s")
