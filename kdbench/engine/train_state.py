"""The trainer's checkpoint side: what a training checkpoint holds, and how a trainer is put back to it.

A checkpoint (format 1, written by `kdbench.engine.checkpoint.CheckpointStore` after every epoch and on
a stop signal mid-epoch) holds the position ``(epoch, batch)``, the student, the method's state, the
optimiser and scheduler, the global RNG, the metric rows so far, the time and image counts, the loss
sums of a stopped epoch (``partial``) and, with a held-out split, the best weights so far (``best``).
A data-parallel run adds ``world_size`` and, per process, its RNG stream and the student's buffers
(``ranks``). Resume is exact: each epoch's data order and augmentation depend only on (seed, epoch) and
everything else that moves is in the checkpoint, so a run killed at any moment and resumed produces
the same weights as an uninterrupted one (bitwise on CPU with ``train.deterministic``).

`TrainerState` is a mixin of `kdbench.engine.trainer.Trainer`: it reads and writes the attributes the
trainer sets up (declared below), so the loop reads top to bottom in trainer.py and the checkpoint's
format lives in this one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdbench._errors import UserError
from kdbench.engine.checkpoint import CheckpointStore, atomic_write_bytes
from kdbench.engine.distributed import Distributed
from kdbench.engine.fingerprint import TeacherModifiedError, changed_tensors
from kdbench.engine.progress import Progress
from kdbench.method import Method
from kdbench.models.base import Network

__all__ = ["TrainerState", "check_world_size"]


class TrainerState:
    """State dict, resume and checkpoint writing of `kdbench.engine.trainer.Trainer` (a mixin)."""

    # Set by Trainer.__init__.
    student: Network
    method: Method
    teacher: Network | None
    teachers: dict[str, Network]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    dist: Distributed
    store: CheckpointStore
    metrics_path: Path
    progress: Progress
    method_name: str
    history: list[dict[str, Any]]
    seconds: float
    images: int
    validator: Callable[[Network], dict[str, float]] | None
    best: dict[str, Any] | None  # {"epoch", "score", "metrics", "student"}
    val_seconds: float
    _partial: dict[str, Any] | None
    _rank_state_restored: bool
    _teacher_digests: dict[str, str] | None
    _extra_teacher_digests: dict[str, dict[str, str]]

    def _rng_state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def state_dict(self, epoch: int, batch: int) -> dict[str, Any]:
        rng = self._rng_state()
        return {
            "format": 1,
            "world_size": self.dist.world_size,
            "epoch": epoch,
            "batch": batch,
            "student": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "history": self.history,
            "seconds": self.seconds,
            "images": self.images,
            "partial": self._partial if batch else None,
            **({"best": self.best, "val_seconds": self.val_seconds} if self.validator is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> tuple[int, int]:
        check_world_size(state, self.dist, self.store.folder)
        self.student.load_state_dict(state["student"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self._restore_rank_state(state)
        self.history = list(state["history"])
        self.seconds = float(state["seconds"])
        self.images = int(state["images"])
        partial = state.get("partial")  # absent in checkpoints of kdbench <= 0.1: the epoch's row then says so
        self._partial = partial if isinstance(partial, dict) and partial.get("steps") == state["batch"] else None
        if self.validator is not None:
            self.best = state.get("best")
            self.val_seconds = float(state.get("val_seconds", 0.0))
        return int(state["epoch"]), int(state["batch"])

    def _resume(self) -> tuple[int, int]:
        """Load the newest good checkpoint, if any: the position ``(epoch, batch)`` to go on from."""
        latest = self.store.load_latest(self.device)
        if latest is None:
            return 0, 0
        start_epoch, start_batch = self.load_state_dict(latest[1])
        if self.dist.is_main:  # killed between a checkpoint and its metrics: make them agree again
            self._write_metrics()
        where = f"epoch {start_epoch + 1}" + (f", step {start_batch}" if start_batch else "")
        self.progress.message(f"resuming from {latest[0]} at {where}")
        return start_epoch, start_batch

    def _checkpoint(self, epoch: int, batch: int) -> Path:
        self._check_teacher_unchanged(epoch, batch)
        ranks = self.dist.gather_objects(self._rank_state()) if self.dist.enabled else None
        if not self.dist.is_main:  # rank 0 writes for everyone
            return self.store.path((epoch, batch))
        state = self.state_dict(epoch, batch)
        if ranks is not None:
            state["ranks"] = ranks
        path = self.store.save((epoch, batch), state)
        self._write_metrics()
        return path

    def _rank_state(self) -> dict[str, Any]:
        """What differs between the processes of a data-parallel run: the global RNG (attack starts are
        drawn per process) and the student's buffers (BatchNorm statistics of each process's slice).
        Gathered into rank 0's checkpoint, so every process resumes its own stream: bitwise."""
        buffers = {k: v.detach().cpu().clone() for k, v in self.student.named_buffers()}
        return {"rng": {k: v.cpu() for k, v in self._rng_state().items()}, "student_buffers": buffers}

    def _restore_rank_state(self, state: dict[str, Any]) -> None:
        """This process's part of `_rank_state` (checkpoints of kdbench <= 0.1 hold rank 0's only: then
        `fit` reseeds the global RNG per process; the buffers stay rank 0's)."""
        ranks = state.get("ranks")
        self._rank_state_restored = False
        if not self.dist.enabled or not isinstance(ranks, list) or len(ranks) != self.dist.world_size:
            return
        mine = ranks[self.dist.rank]
        torch.set_rng_state(mine["rng"]["cpu"].cpu())
        if "cuda" in mine["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["rng"]["cuda"].cpu(), self.device)
        with torch.no_grad():
            for name, buffer in self.student.named_buffers():
                if name in mine["student_buffers"]:
                    buffer.copy_(mine["student_buffers"][name])
        self._rank_state_restored = True

    def _check_teacher_unchanged(self, epoch: int, batch: int) -> None:
        """Stop (before writing the checkpoint) when the method changed the teacher's tensors."""
        changed: list[str] = []
        if self._teacher_digests is not None and self.teacher is not None:
            changed = changed_tensors(self._teacher_digests, self.teacher)
        for name, digests in self._extra_teacher_digests.items():
            changed += [f"{name}:{key}" for key in changed_tensors(digests, self.teachers[name])]
        if changed:
            last = self.store.positions()
            good = f"last good checkpoint: {self.store.path(last[0])}" if last else "no checkpoint was written yet"
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            when = f"epoch {epoch + 1}, step {batch}" if batch else f"the end of epoch {epoch}"
            raise TeacherModifiedError(
                f"method {self.method_name} modified the teacher's weights ({shown} changed by {when}); "
                "a method must never change the teacher (read it through the step context, leave it in eval mode); "
                f"stopped without saving; {good}"
            )

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(row) + "\n" for row in self.history)
        atomic_write_bytes(self.metrics_path, text.encode())


def check_world_size(state: dict[str, Any], world: Distributed, folder: Path) -> None:
    """Refuse to resume a checkpoint of a run with another number of processes, in one line.

    The global batch would stay the same, but each process has its own slice of it, its own RNG
    stream (attack starts) and its own BatchNorm statistics, all saved per process in the checkpoint;
    with another number of processes they cannot continue, and the resumed run would silently be
    another run than the one started. Checkpoints of kdbench <= 0.1 do not record it (accepted, as before).
    """
    saved = state.get("world_size")
    if saved is None or int(saved) == world.world_size:
        return
    how = "without torchrun (one process)" if int(saved) == 1 else f"with {saved} processes in all (torchrun "
    how += "" if int(saved) == 1 else f"--nproc_per_node={saved}, or nodes x processes = {saved})"
    raise UserError(
        f"{folder} holds checkpoints of a run with {saved} process(es), but this one has {world.world_size}: "
        f"resume it {how}, or start a fresh run in another folder (--out)"
    )
