"""The tree stays ruff-clean and kdbench/ stays clean under mypy --strict (the dev extra installs both)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from .conftest import REPO


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[dev]')")
def test_ruff_check_and_format():
    check = subprocess.run(["ruff", "check", "--quiet", "."], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run(["ruff", "format", "--check", "--quiet", "."], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy is not installed (pip install -e '.[dev]')")
def test_mypy_on_the_core():
    proc = subprocess.run(["mypy"], cwd=REPO, capture_output=True, text=True)  # [tool.mypy] packages = kdbench
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy is not installed (pip install -e '.[dev]')")
def test_example_plugin_type_checks_against_the_typed_api():
    """A plugin author's mypy sees kdbench's types: ``Method[FeatureMSEConfig]`` types ``self.config``
    (kdbench ships py.typed), and the example plugin is clean under the same strict settings."""
    assert (REPO / "kdbench" / "py.typed").is_file()
    plugin = "examples/kdbench-example-plugin/kdbench_example_plugin"
    proc = subprocess.run(["mypy", plugin], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_is_strict_on_the_core():
    """The mypy test above checks what [tool.mypy] asks for: strict, Any-returns included (issue 16)."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["packages"] == ["kdbench"]
    assert config.get("strict") is True
    assert config.get("warn_return_any") is True
