"""Shared fixtures: the offline CIFAR-10 copy, fake plugin distributions, tiny recipes."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kdbench.results import Result

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    """KDBENCH_DATA_ROOT, else ../shared/data next to the checkout, when it holds cifar10/."""
    env = os.environ.get("KDBENCH_DATA_ROOT")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "cifar10").is_dir():
            return c.resolve()
    return None


@pytest.fixture
def cifar_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    root = data_root()
    if root is None:
        pytest.skip("offline CIFAR-10 copy not found: set KDBENCH_DATA_ROOT to a folder holding cifar10/")
    monkeypatch.setenv("KDBENCH_DATA_ROOT", str(root))
    return root


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Install a throw-away distribution (a .dist-info with entry points plus its modules) on sys.path.

    ``make(name, version, entry_points={"kdbench.methods": {"x": "mod:Cls"}}, modules={"mod": "code"})``.
    """
    made: list[str] = []

    def make(
        name: str, version: str = "1.0", *, entry_points: dict[str, dict[str, str]], modules: dict[str, str]
    ) -> Path:
        root = tmp_path / f"site-{name}"
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for mod, code in modules.items():
            (root / f"{mod}.py").write_text(textwrap.dedent(code))
            made.append(mod)
        monkeypatch.syspath_prepend(str(root))
        return root

    yield make
    for mod in made:
        sys.modules.pop(mod, None)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def minimal_result(**keys: object) -> Result:
    """A result.json holding only the keys every kdbench writes, plus ``keys``."""
    base = {
        "schema_version": 1,
        "name": "r",
        "method": "kd",
        "student": "resnet8",
        "dataset": "cifar10",
        "threat_model": {"norm": "Linf", "eps": "8/255"},
        "metrics": {"clean_acc": 0.5},
    }
    return Result.parse({**base, **keys})
