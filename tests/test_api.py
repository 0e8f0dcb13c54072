"""The Python API, used exactly as docs/python-api.md shows it (issue 18, point 4)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import kdbench

from .conftest import REPO

DOC = REPO / "docs" / "python-api.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_documented_session_runs_as_written(tmp_path, capsys):
    block = _python_blocks()[0]
    namespace: dict = {"RUNS": tmp_path}
    exec(compile(block, str(DOC), "exec"), namespace)  # the docs' code, unchanged
    out = capsys.readouterr().out.splitlines()
    resolved = namespace["resolved"]
    assert out[0] == f"api_demo {resolved.short_hash}"
    assert resolved.recipe.train.lr == 0.05
    assert out[2] == "torch.Size([4, 10])"
    records = namespace["records"]
    assert records[0]["name"] == "api_demo" and records[0]["run_dir"] == str(tmp_path / "api_demo")
    assert records[0]["pgd20"] is None  # not run: None, never a made-up number
    assert namespace["report"].robust["pgd10"] <= namespace["report"].clean_acc


def test_loaded_model_normalises_with_its_dataset_statistics(tmp_path):
    recipe = {
        "name": "api_norm",
        "data": {"dataset": "fake", "options": {"train_size": 64, "test_size": 32, "image_size": 16}},
        "student": {"model": "resnet8"},
        "method": {"name": "natural"},
        "train": {"epochs": 1, "batch_size": 32},
        "eval": {"attacks": ["clean"]},
    }
    outcome = kdbench.run(recipe, out=tmp_path / "run")
    model = kdbench.load_model(outcome.out_dir)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    from kdbench._registry import DATASETS

    info = DATASETS.get("fake")(
        DATASETS.get("fake").Config(train_size=64, test_size=32, image_size=16), None, False
    ).info()
    norm = next(m for m in model.modules() if type(m).__name__ == "Normalize")
    assert torch.allclose(norm.mean.flatten(), torch.tensor(info.mean))
    again = kdbench.run(recipe, out=tmp_path / "run")
    assert again.reused and again.result == outcome.result
    (tmp_path / "lone").mkdir()
    (tmp_path / "lone" / "model.pt").write_bytes((outcome.out_dir / "model.pt").read_bytes())
    with pytest.raises(kdbench.UserError, match="pass dataset="):
        kdbench.load_model(tmp_path / "lone" / "model.pt")
    assert kdbench.load_model(tmp_path / "lone" / "model.pt", dataset="fake").num_classes == 10


def test_evaluate_any_torch_model_on_tensors():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    images = torch.rand(16, 3, 8, 8)
    labels = model(images).argmax(1)
    report = kdbench.evaluate(model, (images, labels), attacks=["clean", "pgd5"], eps="1/255")
    assert report.clean_acc == 1.0 and 0.0 <= report.robust["pgd5"] <= 1.0
    with pytest.raises(kdbench.UserError, match="not a number"):
        kdbench.evaluate(model, (images, labels), eps="eight")


def test_results_as_a_dataframe(tmp_path):
    pd = pytest.importorskip("pandas", reason="the optional 'pandas' extra is not installed")
    recipe = {
        "name": "api_frame",
        "data": {"dataset": "fake", "options": {"train_size": 64, "test_size": 32, "image_size": 16}},
        "student": {"model": "resnet8"},
        "method": {"name": "natural"},
        "train": {"epochs": 1, "batch_size": 32},
        "eval": {"attacks": ["clean"]},
    }
    kdbench.run(recipe, runs_dir=tmp_path)
    frame = kdbench.load_results(tmp_path, as_frame=True)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(kdbench.api.RESULT_COLUMNS)
    assert frame.loc[0, "name"] == "api_frame" and 0 <= frame.loc[0, "clean"] <= 1


def test_api_names_are_the_functions():
    from kdbench.run import run_recipe  # the submodule's contents stay importable

    assert callable(kdbench.run) and kdbench.run is kdbench.api.run and callable(run_recipe)
    assert set(kdbench.__all__) >= {"run", "load_model", "evaluate", "load_results", "resolve_recipe"}


@pytest.mark.slow
def test_the_notebook_example_runs(cifar_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python_api.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pgd20" in proc.stdout
