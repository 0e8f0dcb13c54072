"""Chunks of an evaluation: the unit that processes share (data-parallel) and that is resumed (on disk).

The N examples are cut into chunks of ``chunk_size`` consecutive examples (``0``: one chunk holding
all of them, the evaluation of one process as kdbench always ran it). Every attack runs each chunk
from its own seed::

    chunk_seed(seed, k) = seed + 1_000_003 k          (chunk 0: the evaluation's seed itself)

and batches of ``batch_size`` within the chunk, so a chunk's per-example outcomes depend on the chunk
only, never on which process computed it, in which order, or in which attempt. Hence

* a data-parallel evaluation (torchrun) gives every process its share of the chunks (the k-th chunk
  still to do goes to process k mod W), gathers the per-example outcomes after each round of W chunks
  and merges them: the merged counts and the per-example worst case equal those of one process
  evaluating the same examples with the same seed and chunk size, exactly;
* a resumed evaluation (`kdbench.evaluation.progress_store`) reads the chunks finished before the kill
  and computes only the others, with the same final numbers as an uninterrupted evaluation, with
  any number of processes.

With one process and ``chunk_size = 0`` every attack starts from ``manual_seed(seed)`` on the whole
set, exactly as before chunks existed. A data-parallel evaluation with ``chunk_size = 0`` uses
`default_chunk_size` (one chunk per process), and reports the chunk size it used, so one process can
reproduce it (``eval.chunk_size``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kdbench._errors import UserError
from kdbench.engine.distributed import Distributed
from kdbench.evaluation.progress_store import ChunkOutcome, EvalProgressStore
from kdbench.results import Result

__all__ = [
    "Chunk",
    "ChunkRunner",
    "check_world",
    "chunk_seed",
    "default_chunk_size",
    "join_evaluation",
    "plan_chunks",
    "recorded_chunk_size",
]

#: Spacing of the chunk seeds (a prime: distinct seeds for any run seed and up to 10^12 chunks).
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Chunk:
    """Examples ``start .. stop - 1`` of the evaluation, the ``index``-th chunk."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def chunk_seed(seed: int, index: int) -> int:
    """The seed every attack starts chunk ``index`` from (``seed`` itself for chunk 0)."""
    return (seed + SEED_STRIDE * index) % (2**63)


def default_chunk_size(n: int, world_size: int) -> int:
    """``chunk_size = 0``: one chunk in one process; ``ceil(n / W)`` (one chunk per process) with W > 1."""
    return 0 if world_size <= 1 else -(-n // world_size)


def plan_chunks(n: int, chunk_size: int) -> list[Chunk]:
    """The chunks of ``n`` examples (``chunk_size`` 0: one chunk of all ``n``)."""
    if chunk_size < 0:
        raise UserError(f"eval.chunk_size must be >= 0 (0: one chunk), got {chunk_size}")
    size = chunk_size if chunk_size > 0 else max(n, 1)
    return [Chunk(k, start, min(start + size, n)) for k, start in enumerate(range(0, n, size))]


def recorded_chunk_size(result: Result | None) -> int | None:
    """The chunk size a result.json's evaluation used (a data-parallel or chunked one), else None.

    So that ``kdbench eval RUN`` in one process reproduces the numbers of a run evaluated by N processes.
    """
    evaluation = result.evaluation if result is not None else None
    attacks = evaluation.get("attacks") if isinstance(evaluation, dict) else None
    if not isinstance(attacks, dict):
        return None
    sizes = {v.get("chunk_size") for v in attacks.values() if isinstance(v, dict)}
    sizes.discard(None)
    if len(sizes) == 1:
        size = sizes.pop()
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return None


def check_world(n: int, world: Distributed) -> None:
    """More processes than examples: refused in one line (each process needs at least one example)."""
    if world.world_size > n:
        raise UserError(
            f"{world.world_size} processes but only {n} examples to evaluate; "
            f"start at most {n} processes (torchrun --nproc_per_node={n}) or evaluate more examples"
        )


def join_evaluation(world: Distributed, evaluate: bool = False) -> bool:
    """Rank 0's ``evaluate`` on every process: whether they all take part in a sharded evaluation
    (False when rank 0 reuses an evaluation an earlier attempt kept); alone, ``evaluate`` itself."""
    return bool(world.broadcast_object(evaluate))


class ChunkRunner:
    """Runs one attack over every chunk: stored ones read back, the rest shared among the processes.

    ``compute(chunk) -> ChunkOutcome`` evaluates one chunk in this process. `run` returns the merged
    ``(n,)`` outcomes and the flags of every chunk in chunk order, identical on every process.
    """

    def __init__(
        self,
        chunks: list[Chunk],
        world: Distributed | None = None,
        store: EvalProgressStore | None = None,
        on_message: Callable[[str], None] | None = None,
    ):
        self.chunks = chunks
        self.n = chunks[-1].stop if chunks else 0
        self.world = world or Distributed()
        self.store = store
        self.on_message = on_message  # told how many chunks an interrupted evaluation left (rank 0)

    def _stored(self, attack: str) -> dict[int, ChunkOutcome]:
        """Rank 0 reads the store; every process receives what it found (one broadcast)."""
        found: dict[int, ChunkOutcome] = {}
        if self.store is not None and self.world.is_main:
            for c in self.chunks:
                outcome = self.store.load(attack, c.index, c.start, c.stop)
                if outcome is not None:
                    found[c.index] = outcome
        received: dict[int, ChunkOutcome] = self.world.broadcast_object(found)  # an object sent by rank 0
        return received

    def run(self, attack: str, compute: Callable[[Chunk], ChunkOutcome]) -> tuple[Tensor, list[str]]:
        done = self._stored(attack)
        todo = [c for c in self.chunks if c.index not in done]
        if done and self.on_message is not None and self.world.is_main and self.store is not None:
            kept = sum(self.chunks[k].size for k in done)
            self.on_message(
                f"{attack}: {len(done)} of {len(self.chunks)} chunks ({kept} examples) kept by an interrupted "
                f"evaluation in {self.store.path}; evaluating the other {len(todo)}"
            )
        size = self.world.world_size
        for first in range(0, len(todo), size):
            mine = todo[first + self.world.rank] if first + self.world.rank < len(todo) else None
            finished = None
            if mine is not None:
                outcome = compute(mine)
                finished = (mine.index, outcome.correct.cpu(), outcome.flags)
            # One round: every process's chunk to every process (a few kB of bools per chunk).
            for record in self.world.gather_objects(finished):
                if record is None:
                    continue
                index, correct, chunk_flags = record
                chunk = self.chunks[index]
                done[index] = ChunkOutcome(correct, tuple(chunk_flags))
                if self.store is not None and self.world.is_main:
                    self.store.save(attack, index, chunk.start, chunk.stop, done[index])
        merged = torch.empty(self.n, dtype=torch.bool)
        flags: list[str] = []
        for c in self.chunks:
            merged[c.start : c.stop] = done[c.index].correct
            before = set(flags)  # a flag every chunk raises (e.g. AutoAttack's class count) is listed once
            flags += [f for f in done[c.index].flags if f not in before]
        return merged, flags
