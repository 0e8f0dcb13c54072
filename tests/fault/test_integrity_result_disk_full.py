"""A full disk at result.json: one line, and the evaluation just computed is kept, so the rerun writes
the result without evaluating again.

The disk "fills up" inside the real `atomic_write_bytes` (as in test_disk_full.py): writes of
result.json's temporary file store half the bytes and fail with ENOSPC, as write(2) does.
"""

from __future__ import annotations

import importlib
import json

import kdbench.engine.checkpoint as checkpoint_module
from kdbench.cli import main

from ..conftest import write
from .conftest import TINY_RECIPE
from .test_disk_full import NO_SPACE, _fill_disk_on

# the module, not the function `kdbench.run` (kdbench/__init__.py exports the Python API's run)
run_module = importlib.import_module("kdbench.run")


def test_disk_full_at_result_json_keeps_the_evaluation(tmp_path, capsys, monkeypatch):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    assert main(["run", str(recipe), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    out = tmp_path / "out"
    _fill_disk_on(monkeypatch, ".result.json.tmp-")
    capsys.readouterr()

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    kept = out / "evaluation.pending.json"
    assert err.strip() == (
        f"kdbench: error: disk full while writing {out / 'result.json'} ({NO_SPACE}); the evaluation is kept in "
        f"{kept}; free some space and run the same command (it writes the result without evaluating again)"
    )
    assert not (out / "result.json").exists()

    monkeypatch.delattr(checkpoint_module, "open")  # space again
    calls = []
    real_evaluate = run_module.evaluate_network
    monkeypatch.setattr(run_module, "evaluate_network", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    assert f"kdbench: using the evaluation kept in {kept} (not evaluating again)" in capsys.readouterr().err
    assert calls == []
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"] == json.loads((tmp_path / "ref" / "result.json").read_text())["metrics"]
    assert not kept.exists()
