"""Live progress: rich bars on a terminal, plain lines in logs and CI, a train.log per run, TensorBoard.

Values shown come from the device only at the trainer's sync points (every ``train.log_every`` steps,
and at least every `Progress.sync_seconds` seconds of wall time), so progress reporting never adds a
host synchronisation to the step beyond those.

Timing (`RunClock`): after `begin_run` each bar and line shows the elapsed training time, the images
per second measured since the run (re)started, the ETA of this run's training and, when the command
line gave a plan (`RunClock.plan`: the FLOP-count estimate of each recipe's training and of everything
that follows it), the ETA of the whole command (teacher chain, evaluation and later sweep variants
included). The estimate of what follows is scaled by how much slower or faster this run really is
than its own estimate, so the whole-run ETA sharpens as training goes on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

__all__ = [
    "MultiProgress",
    "PlainProgress",
    "Progress",
    "RichProgress",
    "RunClock",
    "TensorBoardProgress",
    "make_progress",
    "run_log",
]


class Progress(Protocol):
    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None: ...
    def advance(self, steps: int = 1) -> None: ...
    def show(self, values: dict[str, float]) -> None: ...
    def end_epoch(self, values: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


def _fmt(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items())


def _hms(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h < 100 else f"{h / 24:.1f} d"


@dataclass
class RunClock:
    """Elapsed time, images/s and ETAs of the training run in progress (module doc)."""

    #: recipe hash -> (estimated training seconds, estimated seconds of everything after this training)
    plan: dict[str, tuple[float, float]] = field(default_factory=dict)
    key: str | None = None
    images_per_step: int = 0
    total_steps: int = 0
    steps_at_start: int = 0
    steps: int = 0
    started: float = 0.0

    def begin_run(self, key: str, *, total_steps: int, done_steps: int, images_per_step: int) -> None:
        self.key, self.total_steps, self.images_per_step = key, total_steps, images_per_step
        self.steps = self.steps_at_start = done_steps
        self.started = time.perf_counter()

    def advance(self, steps: int = 1) -> None:
        self.steps += steps

    @property
    def active(self) -> bool:
        return self.key is not None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started if self.active else 0.0

    def images_per_second(self) -> float | None:
        done, elapsed = self.steps - self.steps_at_start, self.elapsed()
        return done * self.images_per_step / elapsed if done > 0 and elapsed > 0 else None

    def run_eta(self) -> float | None:
        """Seconds until this run's training ends, at the rate measured since it (re)started."""
        done, elapsed = self.steps - self.steps_at_start, self.elapsed()
        if done <= 0 or elapsed <= 0:
            return None
        return (self.total_steps - self.steps) * elapsed / done

    def total_eta(self) -> float | None:
        """Seconds until the whole command ends: this training plus the rest, scaled by measured/estimated."""
        eta = self.run_eta()
        if eta is None or self.key not in self.plan:
            return None
        train_estimate, after = self.plan[self.key]
        fraction = (self.steps - self.steps_at_start) / max(self.total_steps, 1)
        scale = self.elapsed() / (train_estimate * fraction) if train_estimate > 0 and fraction > 0 else 1.0
        return eta + after * scale

    def describe(self) -> str:
        """``0:00:12 elapsed, 105 img/s, ETA 0:00:45 (all: 0:03:10)``; empty before `begin_run`."""
        if not self.active:
            return ""
        parts = [f"{_hms(self.elapsed())} elapsed"]
        rate, eta, total = self.images_per_second(), self.run_eta(), self.total_eta()
        if rate is not None:
            parts.append(f"{rate:.0f} img/s")
        if eta is not None:
            parts.append(f"ETA {_hms(eta)}" + (f" (all: {_hms(total)})" if total is not None else ""))
        return ", ".join(parts)


class PlainProgress:
    """One line per sync point and per epoch, for logs (and train.log)."""

    #: A sync point (and so a line) at least this often, even when an epoch has fewer steps than log_every.
    sync_seconds: float = 30.0
    #: Set by `make_progress`: each run also writes TensorBoard scalars into its folder (`run_log`).
    tensorboard: bool = False

    def __init__(self, stream: TextIO | None = None, *, timestamps: bool = False, clock: RunClock | None = None):
        self.stream = stream or sys.stderr
        self.timestamps = timestamps
        self.clock = clock or RunClock()
        self.epoch = self.epochs = self.steps = self.done = 0

    def begin_run(self, key: str, *, total_steps: int, done_steps: int, images_per_step: int) -> None:
        self.clock.begin_run(key, total_steps=total_steps, done_steps=done_steps, images_per_step=images_per_step)

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        self.epoch, self.epochs, self.steps, self.done = epoch, epochs, steps, done

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        self.clock.advance(steps)

    def _timing(self) -> str:
        text = self.clock.describe()
        return f"  | {text}" if text else ""

    def show(self, values: dict[str, float]) -> None:
        self.message(
            f"epoch {self.epoch + 1}/{self.epochs} step {self.done}/{self.steps}  {_fmt(values)}{self._timing()}"
        )

    def end_epoch(self, values: dict[str, float]) -> None:
        self.message(f"epoch {self.epoch + 1}/{self.epochs} done  {_fmt(values)}{self._timing()}")

    def message(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S ") if self.timestamps else ""
        for line in text.splitlines() or [""]:
            print(f"{stamp}{line}", file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """A rich progress bar per epoch with live loss, accuracy, elapsed time, images/s and ETAs."""

    sync_seconds: float = 5.0
    #: Set by `make_progress`: each run also writes TensorBoard scalars into its folder (`run_log`).
    tensorboard: bool = False

    def __init__(self, clock: RunClock | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as _Progress

        self.console = Console(stderr=True)
        self.clock = clock or RunClock()
        self.bar = _Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[values]}"),
            TextColumn("[dim]{task.fields[clock]}"),
            console=self.console,
            transient=False,
        )
        self.bar.start()
        self.task: Any = None  # rich TaskID
        self._clock_shown = 0.0

    def begin_run(self, key: str, *, total_steps: int, done_steps: int, images_per_step: int) -> None:
        self.clock.begin_run(key, total_steps=total_steps, done_steps=done_steps, images_per_step=images_per_step)

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        self.task = self.bar.add_task(
            "", total=steps, completed=done, epoch=f"{epoch + 1}/{epochs}", values="", clock=self.clock.describe()
        )

    def advance(self, steps: int = 1) -> None:
        self.clock.advance(steps)
        if self.task is not None:
            self.bar.advance(self.task, steps)
            now = time.perf_counter()
            if now - self._clock_shown >= 1.0:  # the ETA text changes once a second, not once a step
                self._clock_shown = now
                self.bar.update(self.task, clock=self.clock.describe())

    def show(self, values: dict[str, float]) -> None:
        if self.task is not None:
            self.bar.update(self.task, values=_fmt(values), clock=self.clock.describe())

    def end_epoch(self, values: dict[str, float]) -> None:
        self.show(values)

    def message(self, text: str) -> None:
        self.bar.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.bar.stop()


class TensorBoardProgress:
    """TensorBoard scalars from the same values the bar shows: ``train/<name>`` per sync point (x: global
    step), ``epoch/<name>`` per epoch (x: epoch). Needs the ``tensorboard`` extra."""

    sync_seconds: float = 30.0

    @staticmethod
    def require() -> Any:
        """torch's SummaryWriter; `UserError` with the install line when tensorboard is missing."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            from kdbench._errors import UserError

            raise UserError("--tensorboard needs the tensorboard package: pip install 'kdbench[tensorboard]'") from err
        return SummaryWriter

    def __init__(self, logdir: Path):
        SummaryWriter = self.require()
        self.writer = SummaryWriter(log_dir=str(logdir))
        self.epoch = self.steps = self.done = 0

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        self.epoch, self.steps, self.done = epoch, steps, done

    def advance(self, steps: int = 1) -> None:
        self.done += steps

    def show(self, values: dict[str, float]) -> None:
        step = self.epoch * self.steps + self.done
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)

    def end_epoch(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"epoch/{name}", value, self.epoch + 1)
        self.writer.flush()

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        self.writer.close()


class MultiProgress:
    """Several progress outputs fed with the same calls (the terminal, train.log, TensorBoard)."""

    def __init__(self, *outputs: Any):
        self.outputs = list(outputs)

    @property
    def sync_seconds(self) -> float | None:
        values = [s for o in self.outputs if (s := getattr(o, "sync_seconds", None)) is not None]
        return min(values) if values else None

    def begin_run(self, key: str, *, total_steps: int, done_steps: int, images_per_step: int) -> None:
        for o in self.outputs:
            if hasattr(o, "begin_run"):
                o.begin_run(key, total_steps=total_steps, done_steps=done_steps, images_per_step=images_per_step)

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        for o in self.outputs:
            o.start_epoch(epoch, epochs, steps, done)

    def advance(self, steps: int = 1) -> None:
        for o in self.outputs:
            o.advance(steps)

    def show(self, values: dict[str, float]) -> None:
        for o in self.outputs:
            o.show(values)

    def end_epoch(self, values: dict[str, float]) -> None:
        for o in self.outputs:
            o.end_epoch(values)

    def message(self, text: str) -> None:
        for o in self.outputs:
            o.message(text)

    def close(self) -> None:
        for o in self.outputs:
            o.close()


def run_log(progress: Progress, out: Path, *, tensorboard: bool = False) -> tuple[MultiProgress, Callable[[], None]]:
    """``progress`` plus ``out/train.log`` (timestamped plain lines, appended across resumes) and, with
    ``tensorboard``, scalars in ``out/tensorboard/``. Returns the combined progress and the function
    that closes what this added (the caller's own ``progress`` stays open for the next run)."""
    log = open(out / "train.log", "a", encoding="utf-8")  # noqa: SIM115 - closed by the returned function
    clock = getattr(progress, "clock", None)
    added: list[Any] = [PlainProgress(log, timestamps=True, clock=RunClock(plan=clock.plan if clock else {}))]
    if tensorboard:
        added.append(TensorBoardProgress(out / "tensorboard"))

    def close() -> None:
        for output in added:
            output.close()
        log.close()

    return MultiProgress(progress, *added), close


def make_progress(quiet: bool = False, *, tensorboard: bool = False) -> Progress:
    """Rich bars when stderr is a terminal, plain lines otherwise (or nothing when ``quiet``).

    ``tensorboard`` asks each run to also write TensorBoard scalars into its folder (`run_log`).
    """
    progress: PlainProgress | RichProgress
    if quiet:
        import io

        progress = PlainProgress(io.StringIO())
    elif sys.stderr.isatty():
        progress = RichProgress()
    else:
        progress = PlainProgress()
    progress.tensorboard = tensorboard
    return progress
