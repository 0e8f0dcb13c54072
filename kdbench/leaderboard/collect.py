"""Find and read the result.json files of finished runs, never failing on a bad one.

`collect` walks the given folders recursively for ``result.json`` files (a result.json path may also
be given directly), reads each the way `kdbench.results.read_result` does (JSON, ``schema_version``
equal to `kdbench.results.SCHEMA_VERSION`) and checks the keys the leaderboard reads. A file that is
unreadable, not JSON, of another schema version or missing a key is reported on stderr (one line
each) and skipped; so is a second copy of a run already seen (same ``recipe_hash`` and seed).

Each run also gets a *variant key*: what identifies "the same experiment with another seed". When
the run folder holds the recipe.toml that `kdbench.run` writes (the resolved recipe: every default
filled in), the key is the sha256 of that recipe with ``seed``, ``name`` and ``description``
removed, so runs that differ only by seed (whatever their names) share it. Reading the TOML as data
needs neither the plugins nor the teacher recipe, whose path in recipe.toml is relative to the
original recipe file and may not resolve from the run folder (re-resolving with
`kdbench.recipe.resolve` would need both). Without a usable recipe.toml (missing, malformed, or
naming another hash than the result) the key falls back to the run's own ``recipe_hash``: such a run
is a variant of its own and is never averaged with others.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from kdbench import _toml
from kdbench._errors import RecipeError, UserError
from kdbench.engine.checkpoint import read_regular_file
from kdbench.results import SCHEMA_VERSION

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
#: A result.json is a few kB; anything above this is not one (and is never read into memory).
MAX_RESULT_BYTES = 16 * 2**20
#: Keys of ``metrics.robust`` the leaderboard shows (accuracies in [0, 1] or null).
ACCURACY_KEYS = ("fgsm", "pgd20", "cw", "autoattack", "worst")
#: Top-level recipe keys that do not change the experiment apart from its seed.
SEED_FREE_DROP = ("seed", "name", "description")


@dataclass(frozen=True)
class Skipped:
    """A result file that was not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its result (schema_version 1) and where it came from."""

    result_file: Path
    result: dict[str, Any]
    recipe_file: Path | None  # the recipe.toml beside result.json, when present
    variant_key: str  # equal for runs that differ only by seed (see the module docstring)
    variant_source: str  # "recipe.toml" or "recipe_hash"

    @property
    def run_dir(self) -> Path:
        return self.result_file.parent

    @property
    def seed(self) -> int | None:
        seed = self.result.get("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_fraction(value: Any) -> bool:
    return _is_number(value) and 0.0 <= float(value) <= 1.0


def _is_budget(value: Any) -> bool:
    """A perturbation budget: a finite number >= 0, or a string of one ("8/255", "0.5"; not "1e400")."""
    if isinstance(value, str):
        try:
            value = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError, OverflowError):
            return False
    return _is_number(value) and float(value) >= 0


def check_result(data: Any) -> str | None:
    """The first problem that keeps ``data`` off a leaderboard, or None when it is usable."""
    if not isinstance(data, dict):
        return "not a JSON object"
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        return f"schema_version {version!r}, this kdbench reads {SCHEMA_VERSION}"
    for key in ("name", "method", "student", "dataset"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"{key} is missing or not a string"
    if data.get("teacher") is not None and not isinstance(data["teacher"], str):
        return "teacher is not a string or null"
    threat = data.get("threat_model")
    if not isinstance(threat, dict) or not isinstance(threat.get("norm"), str):
        return "threat_model.norm is missing"
    if not isinstance(threat.get("eps"), str | int | float) or isinstance(threat.get("eps"), bool):
        return "threat_model.eps is missing"
    if not _is_budget(threat["eps"]):
        return f"threat_model.eps {str(threat['eps'])[:40]!r} is not a finite number >= 0 (like 8/255)"
    if "recipe_hash" in data and not isinstance(data["recipe_hash"], str):
        return "recipe_hash is not a string"
    if data.get("seed") is not None and not (isinstance(data["seed"], int) and not isinstance(data["seed"], bool)):
        return "seed is not an integer"
    metrics = data.get("metrics")
    if not isinstance(metrics, dict):
        return "metrics is missing"
    if not _is_fraction(metrics.get("clean_acc")):
        return "metrics.clean_acc is missing or not a fraction in [0, 1]"
    robust = metrics.get("robust", {})
    if not isinstance(robust, dict):
        return "metrics.robust is not an object"
    for key, value in robust.items():
        if value is not None and not _is_fraction(value):
            return f"metrics.robust.{key} is not a fraction in [0, 1] or null"
    flags = data.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        return "flags is not a list of strings"
    for section in ("train", "params", "analysis"):
        if section in data and data[section] is not None and not isinstance(data[section], dict):
            return f"{section} is not an object"
    return None


def variant_key(result: dict[str, Any], recipe_file: Path | None, fallback: str = "") -> tuple[str, str]:
    """``(key, source)``: the seed-free hash of recipe.toml, else the run's own recipe_hash (else ``fallback``)."""
    if recipe_file is not None and recipe_file.is_file():
        try:
            raw = _toml.load_file(recipe_file)
            first = recipe_file.read_text(encoding="utf-8").splitlines()[:1]
        except (RecipeError, OSError, UnicodeDecodeError):
            raw, first = None, []
        recipe_hash = result.get("recipe_hash")
        # kdbench.run heads recipe.toml with "# resolved recipe NAME, hash HASH": a recipe.toml of
        # another run (a folder copied by hand) must not decide which runs are averaged.
        header = first[0] if first and first[0].startswith("#") and "hash" in first[0] else None
        consistent = header is None or not isinstance(recipe_hash, str) or recipe_hash in header
        if isinstance(raw, dict) and consistent:
            core = {k: v for k, v in raw.items() if k not in SEED_FREE_DROP}
            digest = hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            return f"recipe:{digest[:16]}", "recipe.toml"
    own = result.get("recipe_hash")
    return f"run:{own if isinstance(own, str) and own else fallback}", "recipe_hash"


def _read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        text = read_regular_file(path, max_bytes=MAX_RESULT_BYTES, what="result file").decode("utf-8")
    except UserError as exc:
        return None, str(exc).removeprefix(f"result file {path} ")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"unreadable ({getattr(exc, 'strerror', None) or type(exc).__name__})"
    if len(text) > MAX_RESULT_BYTES:
        return None, f"larger than {MAX_RESULT_BYTES} bytes (a result.json is a few kB)"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    except RecursionError:  # thousands of nested brackets: hostile, never a kdbench result
        return None, "nested too deeply to be a result.json"
    problem = check_result(data)
    return (None, problem) if problem else (data, None)


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
            ident = (data.get("recipe_hash"), data.get("seed"))
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
