"""The training loop: one loop for every method (distillation and teacher training alike).

Per batch the trainer builds a `StepContext`, asks the method for its named loss terms, and takes
one SGD step. Everything per step stays on the device: loss sums, accuracy counts and the first
non-finite step are accumulated as tensors and read only at sync points (every
``train.log_every`` steps and at the end of an epoch), so the step issues no host synchronisation.

Resume is exact: each epoch's data order and augmentation depend only on (seed, epoch) and the
global RNG state is checkpointed, so a run killed at any moment and resumed produces the same
weights as an uninterrupted one (bitwise on CPU with ``train.deterministic``).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor, nn

from kdbench._errors import UserError
from kdbench.attacks.base import Attack
from kdbench.engine.checkpoint import CheckpointStore, atomic_write_bytes
from kdbench.engine.distributed import Distributed
from kdbench.engine.hardware import Hardware
from kdbench.engine.progress import Progress
from kdbench.engine.schedule import build_scheduler, lr_factor
from kdbench.method import Method, StepContext
from kdbench.models.base import Network
from kdbench.recipe import TrainSection

__all__ = ["Interrupted", "NonFiniteLossError", "TrainSummary", "Trainer", "global_seed"]


class NonFiniteLossError(UserError):
    """A loss term became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint of the current position was written."""

    exit_code = 130


@dataclass
class TrainSummary:
    epochs: int
    seconds: float
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)


def global_seed(seed: int, epoch: int) -> int:
    """The seed of the global RNG at the start of ``epoch`` (attack starts, dropout).

    Deliberately not the data loader's `kdbench.data.loader.epoch_seed`: the two streams stay distinct.
    """
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


class Trainer:
    """Runs ``train.epochs`` epochs of ``method`` on ``student``, checkpointing after each epoch."""

    def __init__(
        self,
        *,
        student: Network,
        method: Method,
        loader: Any,  # kdbench.data.loader.DeviceLoader
        train: TrainSection,
        hardware: Hardware,
        seed: int,
        store: CheckpointStore,
        metrics_path: Path,
        progress: Progress,
        teacher: Network | None = None,
        attack: Attack | None = None,
        distributed: Distributed | None = None,
        method_name: str | None = None,
        validator: Callable[[Network], dict[str, float]] | None = None,
        val_every: int = 1,
    ):
        self.student, self.method, self.teacher, self.attack = student, method, teacher, attack
        self.loader, self.cfg, self.hw, self.seed = loader, train, hardware, seed
        self.store, self.metrics_path, self.progress = store, metrics_path, progress
        self.device = hardware.device
        self.dist = distributed or Distributed()
        self.method_name = method_name or type(method).__name__
        params = [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=train.nesterov
        )
        steps_per_epoch = len(loader)
        self.steps_per_epoch = steps_per_epoch
        factor = lr_factor(
            train.schedule,
            total_steps=steps_per_epoch * train.epochs,
            steps_per_epoch=steps_per_epoch,
            milestones=list(train.milestones),
            gamma=train.gamma,
            warmup_epochs=train.warmup_epochs,
            epochs=train.epochs,
        )
        self.scheduler = build_scheduler(self.optimizer, factor)
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.images = 0
        self._stop_signal: int | None = None
        # Checkpoint selection on held-out training images (data.val_size): every ``val_every`` epochs and
        # after the last one, ``validator`` scores the student ({"score": robust accuracy, ...}); the best
        # weights are kept (in the checkpoints too, so a resumed run selects as an uninterrupted one would).
        self.validator, self.val_every = validator, val_every
        self.best: dict[str, Any] | None = None  # {"epoch", "score", "metrics", "student"}
        self.val_seconds = 0.0

    # ------------------------------------------------------------------------------ checkpointing

    def state_dict(self, epoch: int, batch: int) -> dict[str, Any]:
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": 1,
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
            **({"best": self.best, "val_seconds": self.val_seconds} if self.validator is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> tuple[int, int]:
        self.student.load_state_dict(state["student"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.history = list(state["history"])
        self.seconds = float(state["seconds"])
        self.images = int(state["images"])
        if self.validator is not None:
            self.best = state.get("best")
            self.val_seconds = float(state.get("val_seconds", 0.0))
        return int(state["epoch"]), int(state["batch"])

    def _checkpoint(self, epoch: int, batch: int) -> Path:
        if not self.dist.is_main:  # rank 0 writes for everyone
            return self.store.path((epoch, batch))
        path = self.store.save((epoch, batch), self.state_dict(epoch, batch))
        self._write_metrics()
        return path

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(row) + "\n" for row in self.history)
        atomic_write_bytes(self.metrics_path, text.encode())

    # ----------------------------------------------------------------------------------- the loop

    def fit(self) -> TrainSummary:
        """Train (resuming from the newest good checkpoint) and return the summary."""
        start_epoch, start_batch = 0, 0
        latest = self.store.load_latest(self.device)
        if latest is not None:
            start_epoch, start_batch = self.load_state_dict(latest[1])
            if self.dist.is_main:  # killed between a checkpoint and its metrics: make them agree again
                self._write_metrics()
            if self.dist.enabled and start_batch:  # the checkpoint holds rank 0's RNG state only
                torch.manual_seed(global_seed(self.seed, start_epoch) + 7919 * start_batch + self.dist.rank)
            where = f"epoch {start_epoch + 1}" + (f", step {start_batch}" if start_batch else "")
            self.progress.message(f"resuming from {latest[0]} at {where}")
        self.student.train()
        self.method.train()
        with self._signals():
            for epoch in range(start_epoch, self.cfg.epochs):
                self._run_epoch(epoch, start_batch if epoch == start_epoch else 0)
        return TrainSummary(
            epochs=self.cfg.epochs,
            seconds=self.seconds,
            images_per_second=self.images / self.seconds if self.seconds > 0 else 0.0,
            history=self.history,
        )

    def _run_epoch(self, epoch: int, start_batch: int) -> None:
        if start_batch == 0:  # attack starts differ between processes, as their data does
            torch.manual_seed(global_seed(self.seed, epoch) + self.dist.rank)
        steps = self.steps_per_epoch
        self.progress.start_epoch(epoch, self.cfg.epochs, steps, start_batch)
        sums: dict[str, Tensor] = {}
        zero = torch.zeros((), device=self.device)
        correct, seen = zero.clone(), zero.clone()
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        bad_terms: dict[str, Tensor] = {}
        tic = time.perf_counter()
        batch = start_batch
        steps_since_sync = 0
        for x, y, index in self.loader.epoch(epoch, start_batch=start_batch):
            terms, logits = self._step(x, y, index, epoch, batch)
            # Only the terms of the first bad step are reported: once the weights are NaN every term is.
            fresh = first_bad < 0
            for name, value in terms.items():
                v = value.detach().float()
                sums[name] = sums[name] + v if name in sums else v
                bad = fresh & ~torch.isfinite(v)
                bad_terms[name] = bad_terms[name] | bad if name in bad_terms else bad
                first_bad = torch.where(bad, batch, first_bad)
            if logits is not None:
                correct += (logits.argmax(1) == y).sum()
                seen += y.numel()
            batch += 1
            steps_since_sync += 1
            self.progress.advance()
            if steps_since_sync >= self.cfg.log_every or (self._stop_signal is not None and not self.dist.enabled):
                steps_since_sync = 0
                self._check_finite(first_bad, bad_terms, epoch)
                self.progress.show(self._means(sums, batch - start_batch))
                if self._should_stop():
                    break
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - tic
        done = batch - start_batch
        self.images += done * self.loader.batch_size * self.dist.world_size
        self._check_finite(first_bad, bad_terms, epoch)
        if self._stop_signal is not None and batch < steps:
            path = self._checkpoint(epoch, batch)
            raise Interrupted(f"stopped by signal {self._stop_signal} at epoch {epoch + 1}, step {batch}; saved {path}")
        values = self._means(sums, max(done, 1))
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"loss/{k}": v for k, v in values.items()}}
        if done:
            row["loss"] = sum(values.values())
        self.dist.sum(correct)
        self.dist.sum(seen)
        if seen.item() > 0:
            row["train_acc"] = (correct / seen).item()
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        row["seconds"] = self.seconds
        if start_batch:
            row["resumed_at_step"] = start_batch
        if self.validator is not None and ((epoch + 1) % self.val_every == 0 or epoch + 1 == self.cfg.epochs):
            row.update(self._validate(epoch + 1))
        self.history.append(row)
        self.progress.end_epoch({k: v for k, v in row.items() if k in ("loss", "train_acc", "lr")})
        self._checkpoint(epoch + 1, 0)
        if self._stop_signal is not None:
            raise Interrupted(f"stopped by signal {self._stop_signal} after epoch {epoch + 1}; checkpoint saved")

    def _validate(self, epoch: int) -> dict[str, float]:
        """Score the student on the held-out images; keep its weights when the score is the best so far
        (ties keep the earlier epoch)."""
        assert self.validator is not None
        tic = time.perf_counter()
        self.student.eval()
        try:
            metrics = self.validator(self.student)
        finally:
            self.student.train()
        self.val_seconds += time.perf_counter() - tic
        score = float(metrics["score"])
        if self.best is None or score > float(self.best["score"]):
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}
            self.best = {"epoch": epoch, "score": score, "metrics": metrics, "student": state}
        return {f"val/{k}": v for k, v in metrics.items()}

    def _step(self, x: Tensor, y: Tensor, index: Tensor, epoch: int, batch: int) -> tuple[dict[str, Tensor], Any]:
        ctx = StepContext(
            x=x,
            y=y,
            index=index,
            student=self.student,
            teacher=self.teacher,
            method=self.method,
            attack=self.attack,
            autocast=self.hw.autocast(),
            epoch=epoch,
            step=batch,
        )
        terms = self.method.loss(ctx)
        if not terms:
            raise RuntimeError(f"method {type(self.method).__name__} returned no loss terms")
        total = torch.stack([t.float() for t in terms.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.dist.average_gradients(self.params)
        self.optimizer.step()
        self.scheduler.step()
        view = ctx.computed("student_adv") or ctx.computed("student_clean")
        return terms, (view.logits.detach() if view is not None else None)

    def _means(self, sums: dict[str, Tensor], count: int) -> dict[str, float]:
        if not sums:
            return {}
        stacked = self.dist.sum(torch.stack(list(sums.values())))
        values = stacked.div(max(count, 1) * self.dist.world_size).tolist()  # one sync for all terms
        return dict(zip(sums, values, strict=True))

    def _should_stop(self) -> bool:
        """Whether a stop signal arrived (in any process: they all stop at the same step)."""
        if not self.dist.enabled:
            return self._stop_signal is not None
        flag = torch.tensor(float(self._stop_signal is not None), device=self.device)
        if self.dist.sum(flag).item() > 0:
            self._stop_signal = self._stop_signal or signal.SIGTERM
            return True
        return False

    def _check_finite(self, first_bad: Tensor, bad_terms: dict[str, Tensor], epoch: int) -> None:
        step = int(self.dist.max(first_bad.clone()).item())
        if step < 0:
            return
        names = [name for name, flag in bad_terms.items() if bool(flag.item())]
        last = self.store.positions()
        good = f"last good checkpoint: {self.store.path(last[0])}" if last else "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"non-finite loss term {', '.join(names)!s} of method {self.method_name} "
            f"at epoch {epoch + 1}, step {step}; stopped without saving; {good}"
        )

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: finish the current step, checkpoint, stop (a second signal stops at once)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            self.progress.message("stopping after this step (signal again to abort without a checkpoint)")

        previous: dict[signal.Signals, Any] = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients: how the teacher runs."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
