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
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from kdbench._errors import PluginError, UserError
from kdbench.attacks.base import Attack
from kdbench.attacks.schedule import EpsSchedule, budget_at
from kdbench.engine.checkpoint import CheckpointStore, atomic_write_bytes
from kdbench.engine.config import TrainSection
from kdbench.engine.distributed import Distributed
from kdbench.engine.epoch_totals import EpochTotals
from kdbench.engine.fingerprint import TeacherModifiedError, changed_tensors, tensor_digests
from kdbench.engine.hardware import Hardware
from kdbench.engine.progress import Progress
from kdbench.engine.schedule import build_scheduler, lr_factor
from kdbench.method import Method, StepContext
from kdbench.models.base import Network

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

    # ------------------------------------------------------------------------------ checkpointing

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

    # ----------------------------------------------------------------------------------- the loop

    def fit(self) -> TrainSummary:
        """Train (resuming from the newest good checkpoint) and return the summary."""
        start_epoch, start_batch = 0, 0
        latest = self.store.load_latest(self.device)
        if latest is not None:
            start_epoch, start_batch = self.load_state_dict(latest[1])
            if self.dist.is_main:  # killed between a checkpoint and its metrics: make them agree again
                self._write_metrics()
            if self.dist.enabled and start_batch and not self._rank_state_restored:  # rank 0's RNG state only
                torch.manual_seed(global_seed(self.seed, start_epoch) + 7919 * start_batch + self.dist.rank)
            where = f"epoch {start_epoch + 1}" + (f", step {start_batch}" if start_batch else "")
            self.progress.message(f"resuming from {latest[0]} at {where}")
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
                self._check_finite(totals, epoch)
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
        self._check_finite(totals, epoch)
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

    def _check_finite(self, totals: EpochTotals, epoch: int) -> None:
        bad = totals.first_bad_step()
        if bad is None:
            return
        step, names = bad
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


def check_loss_terms(terms: Any, method_name: str) -> None:
    """Refuse what `Method.loss` may not return, in one line naming the method and the term.

    The contract: a non-empty dict of name -> scalar floating-point tensor with autograd history. A
    vector would be summed by nobody (stack fails or, worse, broadcasts), a Python float or a detached
    tensor trains nothing, and an empty dict has nothing to minimise.
    """
    where = f"method {method_name}"
    fix = "return a dict of named scalar tensors computed from the step context (e.g. loss.mean())"
    if not isinstance(terms, dict) or not terms:
        got = "an empty dict" if isinstance(terms, dict) else type(terms).__name__
        raise PluginError(f"{where}: loss() returned {got}, not named loss terms; {fix}; stopped before any step")
    for name, value in terms.items():
        problem = None
        if not isinstance(value, Tensor):
            problem = f"is a {type(value).__name__}, not a tensor"
        elif value.dim() != 0:
            problem = f"has shape {tuple(value.shape)}, not a scalar"
        elif not value.is_floating_point():
            problem = f"has dtype {value.dtype}, not a floating-point type"
        elif not value.requires_grad:
            problem = "has no gradient (computed under torch.no_grad() or detached)"
        if problem is not None:
            raise PluginError(f"{where}: loss term {name!r} {problem}; {fix}; stopped before any optimiser step")


_Module = TypeVar("_Module", bound=nn.Module)


def freeze(module: _Module) -> _Module:
    """Eval mode and no parameter gradients: how the teacher runs. Returns ``module`` itself."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
