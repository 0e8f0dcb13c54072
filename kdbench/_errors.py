"""Errors kdbench reports to users as one line, without a traceback.

A `UserError` is a mistake the user can fix (a recipe key, a file, a name); the CLI prints its
message and exits with code 2. Anything else is a bug in kdbench or a plugin and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["PluginError", "RecipeError", "UserError", "close_matches", "did_you_mean"]


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe problem, located by file and dotted key path.

    Renders as ``FILE: KEY.PATH: problem; hint``.
    """

    def __init__(self, problem: str, *, file: str | None = None, key: str | None = None, hint: str | None = None):
        self.problem = problem
        self.file = file
        self.key = key
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = ": ".join(part for part in (self.file, self.key) if part)
        text = f"{where}: {self.problem}" if where else self.problem
        text = f"{text}; {self.hint}" if self.hint else text
        return text.replace("\r", "\\r").replace("\n", "\\n")  # always one line, whatever the input held

    def located(self, *, file: str | None = None, key_prefix: str | None = None) -> RecipeError:
        """The same error with a file and/or a key prefix filled in."""
        key = self.key
        if key_prefix:
            key = f"{key_prefix}.{key}" if key else key_prefix
        return RecipeError(self.problem, file=self.file or file, key=key, hint=self.hint)


class PluginError(UserError):
    """A plugin could not be loaded or conflicts with another one."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates that look like ``word`` (difflib ratio >= 0.6)."""
    return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A hint such as ``did you mean 'kd'? (choices: ard, kd, rslad)``."""
    choices = sorted(set(candidates))
    matches = close_matches(word, choices)
    listing = f"choices: {', '.join(choices)}" if choices else "nothing is registered"
    if matches:
        return f"did you mean {' or '.join(repr(m) for m in matches)}? ({listing})"
    return listing
