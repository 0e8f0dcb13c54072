"""Root pytest configuration: isolation that every test of the project gets (tests/ and plugins/)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs and decode caches of a test never land in the checkout or the user's home."""
    monkeypatch.setenv("KDBENCH_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    monkeypatch.setenv("KDBENCH_HOME", str(tmp_path_factory.mktemp("kdbench-home")))
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decode-cache"))
