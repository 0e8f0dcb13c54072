"""The training loop: one loop for every method (distillation and teacher training alike).

Per batch the trainer builds a `StepContext`, asks the method for its named loss terms, and takes
one SGD step. Everything per step stays on the device: loss sums, accuracy counts and the first
non-finite step are accumulated as tensors and read only at sync points (every
``train.log_every`` steps and at the end of an epoch), so the step issues no host synchronisation.

Resume is exact: each epoch's data order and augmentation depend only on (seed, epoch) and the
global RNG state is checkpointed, so a run killed at any moment and resumed produces the same
weights as an uninterrupted one (bitwise on CPU with ``train.deterministic``). What a checkpoint
holds and how the trainer is put back to it: `kdbench.engine.train_state`; what the loop refuses in
a method's loss terms: `kdbench.engine.loss_checks`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor

from kdbench.attacks.base import Attack
from kdbench.attacks.schedule import EpsSchedule, budget_at
from kdbench.engine.checkpoint import CheckpointStore
from kdbench.engine.config import TrainSection
from kdbench.engine.distributed import Distributed
from kdbench.engine.epoch_totals import EpochTotals
from kdbench.engine.fingerprint import tensor_digests
from kdbench.engine.hardware import Hardware
from kdbench.engine.loss_checks import check_finite, check_loss_terms
from kdbench.engine.progress import Progress
from kdbench.engine.schedule import build_scheduler, lr_factor
from kdbench.engine.train_state import TrainerState
from kdbench.method import Method, StepContext
from kdbench.models.base import Network

__all__ = ["Interrupted", "TrainSummary", "Trainer", "global_seed"]


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


class Trainer(TrainerState):
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
        teachers: dict[str, Network] | None = None,
        attack_schedule: EpsSchedule | None = None,
        run_key: str | None = None,
        validator: Callable[[Network], dict[str, float]] | None = None,
        val_every: int = 1,
    ):
        self.student, self.method, self.teacher, self.attack = student, method, teacher, attack
        self.teachers = dict(teachers or {})  # the additional named teachers (Method.extra_teachers)
        self.attack_schedule = attack_schedule or EpsSchedule()
        self._epoch_attack: Attack | None = attack
        self.loader, self.cfg, self.hw, self.seed = loader, train, hardware, seed
        self.store, self.metrics_path, self.progress = store, metrics_path, progress
        self.device = hardware.device
        self.dist = distributed or Distributed()
        self.method_name = method_name or type(method).__name__
        if self.dist.enabled:  # before any checkpoint is loaded: the method's synchronised state is part of it
            method.enter_data_parallel(self.dist, seed)
        self.run_key = run_key or self.method_name  # names the run to the progress clock (the recipe hash)
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
        # Loss sums and accuracy counts of an epoch stopped mid-way (saved in its checkpoint, restored on
        # resume), so the epoch's row reports the mean over all its steps, as in an uninterrupted run.
        self._partial: dict[str, Any] | None = None
        self._terms_checked = False
        self._rank_state_restored = False
        # Checked before every checkpoint (never per step): a method must leave the teacher untouched.
        self._teacher_digests = tensor_digests(teacher) if teacher is not None else None
        self._extra_teacher_digests = {name: tensor_digests(net) for name, net in self.teachers.items()}
        # Checkpoint selection on held-out training images (data.val_size): every ``val_every`` epochs and
        # after the last one, ``validator`` scores the student ({"score": robust accuracy, ...}); the best
        # weights are kept (in the checkpoints too, so a resumed run selects as an uninterrupted one would).
        self.validator, self.val_every = validator, val_every
        self.best: dict[str, Any] | None = None  # {"epoch", "score", "metrics", "student"}
        self.val_seconds = 0.0

    def fit(self) -> TrainSummary:
        """Train (resuming from the newest good checkpoint) and return the summary."""
        start_epoch, start_batch = self._resume()
        if self.dist.enabled and start_batch and not self._rank_state_restored:  # rank 0's RNG state only
            torch.manual_seed(global_seed(self.seed, start_epoch) + 7919 * start_batch + self.dist.rank)
        begin_run = getattr(self.progress, "begin_run", None)  # optional: elapsed, images/s, ETA
        if begin_run is not None:
            begin_run(
                self.run_key,
                total_steps=self.cfg.epochs * self.steps_per_epoch,
                done_steps=start_epoch * self.steps_per_epoch + start_batch,
                images_per_step=self.loader.batch_size * self.dist.world_size,
            )
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

    def attack_for_epoch(self, epoch: int) -> Attack | None:
        """The training attack of ``epoch``: the recipe's, with eps and step size from ``eps_schedule``."""
        if self.attack is None or not self.attack_schedule.points:
            return self.attack
        config: Any = self.attack.config
        eps, step = budget_at(self.attack_schedule, epoch, config.eps, config.step_size)
        return type(self.attack)(config.model_copy(update={"eps": eps, "step_size": step}))

    def _run_epoch(self, epoch: int, start_batch: int) -> None:
        if start_batch == 0:  # attack starts differ between processes, as their data does
            torch.manual_seed(global_seed(self.seed, epoch) + self.dist.rank)
        self._epoch_attack = self.attack_for_epoch(epoch)
        attacked = False
        steps = self.steps_per_epoch
        self.progress.start_epoch(epoch, self.cfg.epochs, steps, start_batch)
        totals = EpochTotals(self.device, self.dist, start_batch)
        if start_batch:
            totals.resume(self._partial)
        self._partial = None
        tic = time.perf_counter()
        batch = start_batch
        steps_since_sync = 0
        # A sync point also every `sync_seconds` of wall time: slow CPU steps still show live values.
        sync_seconds = getattr(self.progress, "sync_seconds", None)
        last_sync = time.perf_counter()
        for x, y, index in self.loader.epoch(epoch, start_batch=start_batch):
            terms, logits, used_attack = self.step(x, y, index, epoch, batch)
            attacked = attacked or used_attack
            totals.add(batch, terms, logits, y)
            batch += 1
            steps_since_sync += 1
            self.progress.advance()
            due = steps_since_sync >= self.cfg.log_every
            if sync_seconds is not None and not self.dist.enabled and not due:
                due = time.perf_counter() - last_sync >= sync_seconds  # a host clock read: no device sync
            if due or (self._stop_signal is not None and not self.dist.enabled):
                steps_since_sync = 0
                last_sync = time.perf_counter()
                check_finite(totals, epoch, self.method_name, self.store)
                values = totals.means(batch)
                if logits is not None:
                    values["acc"] = totals.local_accuracy()  # this process's share of the epoch
                self.progress.show(values)
                if self._should_stop():
                    break
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - tic
        done = batch - start_batch
        self.images += done * self.loader.batch_size * self.dist.world_size
        check_finite(totals, epoch, self.method_name, self.store)
        if self._stop_signal is not None and batch < steps:
            self._partial = totals.partial(batch)
            path = self._checkpoint(epoch, batch)
            raise Interrupted(f"stopped by signal {self._stop_signal} at epoch {epoch + 1}, step {batch}; saved {path}")
        values = totals.means(batch)
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"loss/{k}": v for k, v in values.items()}}
        if done:
            row["loss"] = sum(values.values())
        accuracy = totals.accuracy()
        if accuracy is not None:
            row["train_acc"] = accuracy
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        budget = self._epoch_attack.config if attacked and self._epoch_attack is not None else None
        if budget is not None and hasattr(budget, "eps"):  # the training attack's budget this epoch
            row["attack_eps"] = float(budget.eps)
            if hasattr(budget, "step_size"):
                row["attack_step_size"] = float(budget.step_size)
        row["seconds"] = self.seconds
        if totals.counted_from:  # resumed from an old checkpoint without the sums: the means cover fewer steps
            row["resumed_at_step"] = totals.counted_from
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

    def step(self, x: Tensor, y: Tensor, index: Tensor, epoch: int, batch: int) -> tuple[dict[str, Tensor], Any, bool]:
        """One optimisation step on the batch ``(x, y, index)`` (on the device): the method's loss (its
        attack included), backward, optimiser and scheduler, with no host synchronisation.

        Returns the loss terms (device tensors), the logits the method reports for training accuracy and
        whether the engine's attack ran. `fit` calls it for every batch; ``kdbench bench`` times it.
        """
        ctx = StepContext(
            x=x,
            y=y,
            index=index,
            student=self.student,
            teacher=self.teacher,
            teachers=self.teachers,
            method=self.method,
            method_name=self.method_name,
            attack=self._epoch_attack,
            autocast=self.hw.autocast(),
            epoch=epoch,
            step=batch,
            lr_scale=self.optimizer.param_groups[0]["lr"] / self.cfg.lr,
        )
        terms = self.method.loss(ctx)
        if not self._terms_checked:  # once, at the first step, before any optimiser step
            check_loss_terms(terms, self.method_name)
            self._terms_checked = True
        total = torch.stack([t.float() for t in terms.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.dist.average_gradients(self.params)
        self.optimizer.step()
        self.scheduler.step()
        view = ctx.computed("student_adv") or ctx.computed("student_clean")
        return terms, (view.logits.detach() if view is not None else None), ctx.computed("x_adv") is not None

    def _should_stop(self) -> bool:
        """Whether a stop signal arrived (in any process: they all stop at the same step)."""
        if not self.dist.enabled:
            return self._stop_signal is not None
        flag = torch.tensor(float(self._stop_signal is not None), device=self.device)
        if self.dist.sum(flag).item() > 0:
            self._stop_signal = self._stop_signal or signal.SIGTERM
            return True
        return False

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
