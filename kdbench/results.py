"""result.json (schema_version 1): the contract every consumer of a run reads, typed as `Result`.

    {"schema_version": 1, "name", "recipe_hash", "method", "teacher", "student", "dataset",
     "threat_model": {"norm", "eps"},
     "metrics": {"clean_acc", "robust": {"fgsm", "pgd20", "cw", "autoattack", "worst"}, "n_eval", "counts"},
     "flags": [...], "train": {"epochs", "seconds", "images_per_second"},
     "env": {"torch", "device", "git_commit", "plugins", "python", "kdbench"}, "seed", ...}

Accuracies are fractions in [0, 1]. Keys are only ever added; renaming or dropping one bumps
``schema_version``. `Result` is the one model the writer (`kdbench.run`) and every reader (eval
``--update-result``, analyze, the leaderboard, the RobustBench export, the Python API) share: the
keys every kdbench since schema 1 writes are required and typed, the others optional (files of
older versions lack them), and unknown keys are kept as they are, so a file read and written back
by an older or newer kdbench loses nothing. A result written by `Result.dump` has its keys in the
order the writer set them, so the same run gives the same bytes.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from kdbench._errors import UserError
from kdbench._registry import ATTACKS, DATASETS, METHODS, MODELS, Registry
from kdbench.engine.checkpoint import atomic_write_bytes, read_regular_file

__all__ = [
    "SCHEMA_VERSION",
    "Metrics",
    "Result",
    "ThreatModel",
    "environment",
    "eps_label",
    "read_result",
    "result_problem",
    "write_json",
]

SCHEMA_VERSION = 1
#: A result.json is a few kB; anything above this is not one (and is never read into memory).
MAX_RESULT_BYTES = 16 * 2**20


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fraction(value: Any) -> Any:
    if not (_is_number(value) and 0.0 <= value <= 1.0):
        raise ValueError("is not a fraction in [0, 1]")
    return value


def _optional_fraction(value: Any) -> Any:
    return None if value is None else _fraction(value)


def _budget(value: Any) -> Any:
    """A perturbation budget: a finite number >= 0, or a string of one ("8/255", "0.5"; not "1e400")."""
    if isinstance(value, str):
        try:
            number = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError, OverflowError):
            number = math.nan
    else:
        number = float(value) if _is_number(value) else math.nan
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{str(value)[:40]!r} is not a finite number >= 0 (like 8/255)")
    return value


def _name(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise ValueError("is not a non-empty string")
    return value


# The checks are plain functions over Any (no unions): a value keeps its JSON type (an int accuracy stays
# an int, so a file read and written back is unchanged) and an error names its key without union tags.
#: An accuracy: a number in [0, 1].
Fraction01 = Annotated[Any, AfterValidator(_fraction)]
#: A non-empty string (run, method, model and dataset names).
Name = Annotated[Any, AfterValidator(_name)]
#: A perturbation budget as result.json writes it ("8/255") or a number.
Budget = Annotated[Any, AfterValidator(_budget)]


class _Record(BaseModel):
    """A part of result.json: declared keys typed, unknown keys kept (files of other versions)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=True)


class ThreatModel(_Record):
    """``{"norm": "Linf" | "L2", "eps": "8/255"}``: the evaluation's perturbation budget."""

    norm: StrictStr
    eps: Budget


class Metrics(_Record):
    """``metrics`` (also ``teacher_metrics``, ``metrics_best_val``): accuracies as fractions of ``n_eval``.

    ``counts`` holds the correct examples per attack (with ``clean`` and ``worst``), so every accuracy is
    exactly ``counts[name] / n_eval``; runs of older versions have no counts.
    """

    clean_acc: Fraction01
    robust: dict[str, Annotated[Any, AfterValidator(_optional_fraction)]] = Field(default_factory=dict)
    n_eval: StrictInt | None = None
    counts: dict[str, StrictInt] | None = None


class TrainRecord(_Record):
    """``train``: epochs, wall seconds, throughput, training-set size and the final epoch's averages."""

    epochs: StrictInt | None = None
    seconds: StrictInt | StrictFloat | None = None
    images_per_second: StrictInt | StrictFloat | None = None
    train_size: StrictInt | None = None
    final: dict[str, Any] = Field(default_factory=dict)


class Environment(_Record):
    """``env``: what produced the run (versions, device, commit, the distributions of its components)."""

    kdbench: StrictStr | None = None
    torch: StrictStr | None = None
    python: StrictStr | None = None
    device: StrictStr | None = None
    git_commit: StrictStr | None = None
    plugins: dict[str, StrictStr] = Field(default_factory=dict)


class Result(_Record):
    """A run's result.json. Fields are declared in the order the writer sets them (see `dump`)."""

    schema_version: Literal[1]
    name: Name
    recipe_hash: StrictStr | None = None
    method: Name
    teacher: StrictStr | None = None
    student: Name
    dataset: Name
    threat_model: ThreatModel
    metrics: Metrics
    flags: list[StrictStr] = Field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    flag_details: list[dict[str, Any]] | None = None
    train: TrainRecord | None = None
    params: dict[str, StrictInt | None] | None = None
    env: Environment | None = None
    normalize: dict[str, Any] | None = None
    teacher_source: dict[str, Any] | None = None
    teacher_metrics: Metrics | None = None
    teacher_flags: list[StrictStr] | None = None
    validation: dict[str, Any] | None = None
    metrics_best_val: Metrics | None = None
    flags_best_val: list[StrictStr] | None = None
    cost: dict[str, Any] | None = None
    precision: StrictStr | None = None
    world_size: StrictInt | None = None
    deterministic: StrictBool | None = None
    seed: StrictInt | None = None
    analysis: dict[str, Any] | None = None
    reevaluated: dict[str, Any] | None = None

    @classmethod
    def parse(cls, data: Any) -> Result:
        """``data`` (parsed JSON) as a Result; `ResultError` with a one-line reason when it is not one."""
        if not isinstance(data, dict):
            raise ResultError("not a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ResultError(f"schema_version {version!r}, this kdbench reads {SCHEMA_VERSION}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ResultError(_first_problem(exc)) from None

    @classmethod
    def read(cls, path: Path) -> Result:
        """The result at ``path``; `ResultError` (missing, unreadable, too large, not a result) otherwise."""
        try:
            text = read_regular_file(path, max_bytes=MAX_RESULT_BYTES, what="result file").decode("utf-8")
        except UserError as exc:
            raise ResultError(str(exc).removeprefix(f"result file {path} ")) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultError(f"unreadable ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ResultError(f"not valid JSON ({exc})") from None
        except RecursionError:  # thousands of nested brackets: hostile, never a kdbench result
            raise ResultError("nested too deeply to be a result.json") from None
        return cls.parse(data)

    def dump(self) -> dict[str, Any]:
        """The JSON object: the keys that were set, in the order of the fields, then the unknown ones."""
        return self.model_dump(mode="json", exclude_unset=True)

    def write(self, path: Path) -> None:
        """Write atomically (a crash never leaves a half-written result)."""
        write_json(path, self.dump())

    def updated(self, **changes: Any) -> Result:
        """A copy with top-level keys replaced or added (validated again, so a wrong value fails here)."""
        return Result.parse({**self.dump(), **changes})

    @property
    def short_hash(self) -> str:
        return (self.recipe_hash or "")[:10]


class ResultError(ValueError):
    """A file that is not a usable result.json; the message is the one-line reason."""


def _first_problem(exc: ValidationError) -> str:
    """pydantic's first error as ``"metrics.clean_acc is not a fraction in [0, 1]"``."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(
        str(part) for part in error["loc"] if not str(part).startswith(("function-", "lax-", "str", "int", "float"))
    )
    kind = error["type"]
    if kind == "missing":
        return f"{where} is missing"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{where} is not an object"
    if kind == "list_type":
        return f"{where} is not a list"
    if kind == "value_error":
        return f"{where} {error.get('ctx', {}).get('error', error['msg'])!s}"
    return f"{where}: {error['msg'].lower()}"


def result_problem(data: Any) -> str | None:
    """The one-line reason ``data`` is not a usable result.json, or None when it is one."""
    try:
        Result.parse(data)
    except ResultError as exc:
        return str(exc)
    return None


def eps_label(eps: float) -> str:
    """``8/255`` for the usual pixel budgets, else the number (``0.5``)."""
    k = round(eps * 255)
    if k and abs(k / 255 - eps) < 1e-9:
        return f"{k}/255"
    return f"{eps:g}"


def git_commit() -> str | None:
    """The commit of the kdbench source tree, if it is a git checkout (with ``+dirty`` when modified)."""
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def environment(device: str, names: dict[str, list[str]]) -> dict[str, Any]:
    """Versions and provenance: torch, device, git commit and the distributions of the components used."""
    from kdbench import __version__

    registries: dict[str, Registry[Any]] = {
        "models": MODELS,
        "datasets": DATASETS,
        "attacks": ATTACKS,
        "methods": METHODS,
    }
    plugins: dict[str, str] = {}
    for kind, used in names.items():
        for name in used:
            entry = registries[kind].entry(name)
            plugins[entry.distribution] = entry.version
    return {
        "kdbench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "git_commit": git_commit(),
        "plugins": plugins,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write pretty JSON (a crash never leaves a half-written result)."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def read_result(path: Path) -> Result | None:
    """The Result at ``path``, or None if missing, unreadable, of another version or not a result."""
    try:
        return Result.read(path)
    except ResultError:
        return None
