"""result.json (schema_version 1): the contract every consumer of a run reads.

    {"schema_version": 1, "name", "recipe_hash", "method", "teacher", "student", "dataset",
     "threat_model": {"norm", "eps"},
     "metrics": {"clean_acc", "robust": {"fgsm", "pgd20", "cw", "autoattack", "worst"}, "n_eval"},
     "flags": [...], "train": {"epochs", "seconds", "images_per_second"},
     "env": {"torch", "device", "git_commit", "plugins", "python", "kdbench"}, "seed", ...}

Accuracies are fractions in [0, 1]. Keys are only ever added; renaming or dropping one bumps
``schema_version``.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from kdbench._registry import ATTACKS, DATASETS, METHODS, MODELS, Registry
from kdbench.engine.checkpoint import atomic_write_bytes

__all__ = ["SCHEMA_VERSION", "environment", "eps_label", "read_result", "write_json"]

SCHEMA_VERSION = 1


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


def read_result(path: Path) -> dict[str, Any] | None:
    """A result.json of this schema version, or None if missing, unreadable or of another version."""
    try:
        if not path.is_file() or path.stat().st_size > 16 * 2**20:  # a result.json is a few kB
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: hostile nesting
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return None
    if not isinstance(data.get("recipe_hash"), str):
        return None
    return data
