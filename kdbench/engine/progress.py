"""Live progress: rich bars on a terminal, plain lines in logs and CI.

Values shown come from the device only at the trainer's sync points (every ``train.log_every``
steps), so progress reporting never adds a host synchronisation to the step.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

__all__ = ["PlainProgress", "Progress", "RichProgress", "make_progress"]


class Progress(Protocol):
    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None: ...
    def advance(self, steps: int = 1) -> None: ...
    def show(self, values: dict[str, float]) -> None: ...
    def end_epoch(self, values: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


def _fmt(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in values.items())


class PlainProgress:
    """One line per sync point and per epoch, for logs."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.epoch = self.epochs = self.steps = self.done = 0

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        self.epoch, self.epochs, self.steps, self.done = epoch, epochs, steps, done

    def advance(self, steps: int = 1) -> None:
        self.done += steps

    def show(self, values: dict[str, float]) -> None:
        self.message(f"epoch {self.epoch + 1}/{self.epochs} step {self.done}/{self.steps}  {_fmt(values)}")

    def end_epoch(self, values: dict[str, float]) -> None:
        self.message(f"epoch {self.epoch + 1}/{self.epochs} done  {_fmt(values)}")

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


class RichProgress:
    """A rich progress bar per epoch with the latest loss values."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as _Progress

        self.console = Console(stderr=True)
        self.bar = _Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[values]}"),
            console=self.console,
            transient=False,
        )
        self.bar.start()
        self.task: Any = None  # rich TaskID

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        self.task = self.bar.add_task("", total=steps, completed=done, epoch=f"{epoch + 1}/{epochs}", values="")

    def advance(self, steps: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, steps)

    def show(self, values: dict[str, float]) -> None:
        if self.task is not None:
            self.bar.update(self.task, values=_fmt(values))

    def end_epoch(self, values: dict[str, float]) -> None:
        self.show(values)

    def message(self, text: str) -> None:
        self.bar.console.print(text)

    def close(self) -> None:
        self.bar.stop()


def make_progress(quiet: bool = False) -> Progress:
    """Rich bars when stderr is a terminal, plain lines otherwise (or nothing when ``quiet``)."""
    if quiet:
        import io

        return PlainProgress(io.StringIO())
    if sys.stderr.isatty():
        return RichProgress()
    return PlainProgress()
