"""Find and read the result.json files of finished runs, never failing on a bad one.

`collect` walks the given folders recursively for ``result.json`` files (a result.json path may also
be given directly) and reads each as a `kdbench.results.Result` (the typed contract every reader
shares: ``schema_version`` 1, the required keys present and typed). A file that is
unreadable, not JSON, of another schema version or missing a key is reported on stderr (one line
each) and skipped; so is a second copy of a run already seen (same ``recipe_hash`` and seed).

Each run also gets a *variant key*: what identifies "the same experiment with another seed". When
the run folder holds the recipe.toml that `kdbench.run` writes (the resolved recipe: every default
filled in), the key is the sha256 of that recipe with ``seed``, ``name`` and ``description``
removed (and its ``[run]`` provenance table, which names the run's own hash), so runs that differ
only by seed (whatever their names) share it. Reading the TOML as data needs no plugins. Without a
usable recipe.toml (missing, malformed, or naming another hash than the result) the key falls back
to the run's own ``recipe_hash``: such a run is a variant of its own and is never averaged with
others.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench import _toml
from kdbench._errors import RecipeError, UserError
from kdbench.results import Result, ResultError, result_problem

__all__ = [
    "ACCURACY_KEYS",
    "RESULT_FILE",
    "Collection",
    "RunRecord",
    "Skipped",
    "check_result",
    "collect",
    "find_result_files",
    "variant_key",
]

RESULT_FILE = "result.json"
RECIPE_FILE = "recipe.toml"
#: Keys of ``metrics.robust`` the leaderboard shows (accuracies in [0, 1] or null).
ACCURACY_KEYS = ("fgsm", "pgd20", "cw", "autoattack", "worst")
#: Top-level recipe keys that do not change the experiment apart from its seed.
SEED_FREE_DROP = ("seed", "name", "description", "run")


@dataclass(frozen=True)
class Skipped:
    """A result file that was not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its result (schema_version 1) and where it came from."""

    result_file: Path
    result: Result
    recipe_file: Path | None  # the recipe.toml beside result.json, when present
    variant_key: str  # equal for runs that differ only by seed (see the module docstring)
    variant_source: str  # "recipe.toml" or "recipe_hash"

    @property
    def run_dir(self) -> Path:
        return self.result_file.parent

    @property
    def seed(self) -> int | None:
        return self.result.seed


@dataclass
class Collection:
    """The usable runs, in file order, and the files that were skipped."""

    runs: list[RunRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def find_result_files(paths: Iterable[Path]) -> list[Path]:
    """Every ``result.json`` under the given folders (recursively) or given directly, sorted, without repeats.

    A path that does not exist is a `UserError` (a typo on the command line, not a broken run).
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for root in paths:
        if root.is_file():
            candidates = [root]
        elif root.is_dir():
            candidates = sorted(p for p in root.rglob(RESULT_FILE) if p.is_file())
        else:
            raise UserError(f"{root} not found: give folders that hold runs (e.g. runs/) or result.json files")
        for path in candidates:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def check_result(data: Any) -> str | None:
    """The first problem that keeps ``data`` off a leaderboard, or None when it is usable: the typed
    `kdbench.results.Result` contract, the one every reader of result.json shares."""
    return result_problem(data)


def variant_key(result: Result, recipe_file: Path | None, fallback: str = "") -> tuple[str, str]:
    """``(key, source)``: the seed-free hash of recipe.toml, else the run's own recipe_hash (else ``fallback``)."""
    if recipe_file is not None and recipe_file.is_file():
        try:
            raw = _toml.load_file(recipe_file)
            first = recipe_file.read_text(encoding="utf-8").splitlines()[:1]
        except (RecipeError, OSError, UnicodeDecodeError):
            raw, first = None, []
        recipe_hash = result.recipe_hash
        # kdbench.run heads recipe.toml with "# resolved recipe NAME, hash HASH": a recipe.toml of
        # another run (a folder copied by hand) must not decide which runs are averaged.
        header = first[0] if first and first[0].startswith("#") and "hash" in first[0] else None
        consistent = header is None or not isinstance(recipe_hash, str) or recipe_hash in header
        if isinstance(raw, dict) and consistent:
            core = {k: v for k, v in raw.items() if k not in SEED_FREE_DROP}
            digest = hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            return f"recipe:{digest[:16]}", "recipe.toml"
    own = result.recipe_hash
    return f"run:{own or fallback}", "recipe_hash"


def _read(path: Path) -> tuple[Result | None, str | None]:
    try:
        return Result.read(path), None
    except ResultError as exc:
        return None, str(exc)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def collect(paths: Iterable[Path], *, report: Callable[[str], None] | None = _stderr) -> Collection:
    """Read every result.json under ``paths``; skipped files are passed to ``report`` as one line each."""
    out = Collection()
    seen: dict[tuple[Any, Any], Path] = {}
    for path in find_result_files(paths):
        data, problem = _read(path)
        if data is None:
            out.skipped.append(Skipped(path, problem or "unusable"))
        else:
            ident = (data.recipe_hash, data.seed)
            if ident[0] is not None and ident in seen:
                out.skipped.append(Skipped(path, f"duplicate of {seen[ident]} (same recipe hash and seed)"))
            else:
                if ident[0] is not None:
                    seen[ident] = path
                recipe = path.parent / RECIPE_FILE
                key, source = variant_key(data, recipe if recipe.is_file() else None, str(path))
                out.runs.append(RunRecord(path, data, recipe if recipe.is_file() else None, key, source))
                continue
        if report is not None:
            report(f"kdbench: skipped {path}: {out.skipped[-1].reason}")
    return out
