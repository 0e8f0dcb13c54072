"""Failing plugins: a broken third-party distribution never breaks a recipe that does not use it.

One throw-away distribution ("broken-plugins" 0.3, installed on sys.path by the `fake_distribution`
fixture) registers, in every registry, components that raise ImportError, RuntimeError or
SyntaxError on import, point at a missing attribute, register an object of the wrong type, or reuse
a built-in's name. A tiny recipe that uses none of them trains and evaluates end to end; each broken
one is reported with its distribution, version and entry point; ``kdbench plugins check`` lists them
all and exits 1; and with KDBENCH_DISABLE_PLUGIN_AUTOLOAD=1 the distribution is invisible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kdbench import ATTACKS, DATASETS, METHODS, MODELS, PluginError
from kdbench.cli import main
from kdbench.commands.plugins import check_plugins

from ..conftest import write
from .conftest import TINY_RECIPE

MODULES = {
    "bp_import": "raise ImportError('No module named torch_extras')",
    "bp_runtime": "raise RuntimeError('CUDA driver initialisation failed')",
    "bp_syntax": "def broken(:\n    pass\n",
    "bp_ok": """
        from kdbench import Method

        class Good(Method):
            '''A method that loads fine (its name clashes with a built-in).'''

            def loss(self, ctx):
                return {}

        thing = 42
    """,
}

#: registry kind -> {name: target}; the error each one must report.
BROKEN = {
    "kdbench.methods": {
        "bp_import_method": "bp_import:Good",
        "bp_runtime_method": "bp_runtime:Good",
        "bp_syntax_method": "bp_syntax:Good",
        "bp_missing_method": "bp_ok:Missing",
        "bp_wrong_type_method": "bp_ok:thing",
        "trades": "bp_ok:Good",  # a second provider of a built-in name
    },
    "kdbench.models": {"bp_model": "bp_import:Net"},
    "kdbench.datasets": {"bp_dataset": "bp_runtime:Source"},
    "kdbench.attacks": {"bp_attack": "bp_ok:thing"},
}
EXPECTED_ERROR = {
    "bp_import_method": "ImportError: No module named torch_extras",
    "bp_runtime_method": "RuntimeError: CUDA driver initialisation failed",
    "bp_syntax_method": "SyntaxError",
    "bp_missing_method": "AttributeError",
    "bp_wrong_type_method": "not a subclass of kdbench.method.Method",
    "trades": "registered by more than one distribution",
    "bp_model": "ImportError",
    "bp_dataset": "RuntimeError",
    "bp_attack": "not a subclass of kdbench.attacks.base.Attack",
}
REGISTRIES = (MODELS, DATASETS, ATTACKS, METHODS)


def _rediscover(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the global registries discover entry points afresh (their caches are restored after the test)."""
    for registry in REGISTRIES:
        monkeypatch.setattr(registry, "_entries", None)


@pytest.fixture
def broken_plugins(fake_distribution, monkeypatch):
    """Install the broken distribution where the global registries will find it."""
    root = fake_distribution("broken-plugins", "0.3", entry_points=BROKEN, modules=MODULES)
    _rediscover(monkeypatch)
    return root


def test_a_recipe_that_does_not_use_them_runs_end_to_end(broken_plugins, tmp_path, capsys):
    assert "bp_import_method" in METHODS.names()  # discovered, not loaded
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE.replace("epochs = 3", "epochs = 1"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["env"]["plugins"] == {"kdbench": result["env"]["kdbench"]}
    assert main(["list"]) == 0  # listing copes with broken entries too
    assert "[failed to load]" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXPECTED_ERROR))
def test_each_broken_component_names_distribution_version_and_entry_point(broken_plugins, name):
    group, target = next((g, eps[name]) for g, eps in BROKEN.items() if name in eps)
    registry = {f"kdbench.{r.kind}": r for r in REGISTRIES}[group]
    with pytest.raises(PluginError) as info:
        registry.get(name)
    message = str(info.value)
    assert "broken-plugins 0.3" in message
    assert target in message
    assert EXPECTED_ERROR[name] in message


def test_a_recipe_naming_a_broken_method_fails_in_one_line(broken_plugins, tmp_path, capsys):
    recipe = write(tmp_path / "r.toml", TINY_RECIPE.replace('name = "natural"', 'name = "bp_runtime_method"'))
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"kdbench: error: {recipe}: method.name: plugin broken-plugins 0.3 failed to load ")
    assert "'bp_runtime_method = bp_runtime:Good': RuntimeError: CUDA driver initialisation failed" in err


def test_plugins_check_reports_every_component_and_fails(broken_plugins, capsys):
    assert main(["plugins", "check"]) == 1
    out = capsys.readouterr().out.splitlines()
    body, summary = out[:-1], out[-1]
    failed = [line for line in body if line.startswith("FAILED")]
    assert len(failed) == len(EXPECTED_ERROR)
    for name, error in EXPECTED_ERROR.items():
        (line,) = [line for line in failed if f"/{name} " in line]
        assert "broken-plugins 0.3" in line
        assert error in line
    assert any(line.startswith("ok") and "methods/kd " in line for line in body)
    assert summary == f"{len(body)} components, {len(failed)} failed"
    assert all(ok == (error == "") for ok, _, _, error in check_plugins())


def test_disabling_autoload_hides_the_broken_distribution(broken_plugins, monkeypatch, capsys):
    monkeypatch.setenv("KDBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    _rediscover(monkeypatch)
    assert not {"bp_import_method", "bp_model", "bp_dataset", "bp_attack"} & {n for r in REGISTRIES for n in r.names()}
    assert main(["plugins", "check"]) == 0
    out = capsys.readouterr().out
    assert "broken-plugins" not in out
    assert "FAILED" not in out
    assert METHODS.get("trades").__name__ == "TRADES"  # the built-in, no longer contested


def test_plugins_check_from_a_shell(broken_plugins):
    """The real entry-point discovery of a fresh interpreter, with the distribution on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(broken_plugins)}
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", "plugins", "check"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.count("FAILED") == len(EXPECTED_ERROR)
    assert "Traceback" not in proc.stdout + proc.stderr
    env["KDBENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", "plugins", "check"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stdout
    assert "broken-plugins" not in proc.stdout
