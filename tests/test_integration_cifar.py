"""End to end on the real CIFAR-10 copy: the quickstart, and that adversarial training works.

These need the offline copy ($KDBENCH_DATA_ROOT/cifar10, ../shared/data in this project) and skip
with that reason when it is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys

from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from .conftest import REPO, write


def test_quickstart_runs_end_to_end(cifar_root, tmp_path):
    """`kdbench run recipes/quickstart.toml`: teacher then student, result.json, and the rerun is a no-op."""
    cmd = [sys.executable, "-m", "kdbench", "run", str(REPO / "recipes" / "quickstart.toml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("total time: ")  # the command's last line, after the result's
    result_line = next(line for line in reversed(lines) if line.startswith("result: "))
    result = json.loads((tmp_path / result_line.removeprefix("result: ")).read_text())  # absolute paths stay absolute
    assert result["schema_version"] == 1 and result["name"] == "quickstart"
    assert result["teacher"] == "resnet20" and result["student"] == "resnet8" and result["method"] == "kd"
    m = result["metrics"]
    assert m["n_eval"] == 500
    assert 0.2 < m["clean_acc"] < 0.7  # well above chance (0.1) after 4 short epochs
    assert m["robust"]["pgd20"] is not None and m["robust"]["pgd20"] <= m["robust"]["fgsm"] <= m["clean_acc"]
    assert m["robust"]["autoattack"] is None  # not requested, so not reported
    assert result["threat_model"] == {"norm": "Linf", "eps": "8/255"}
    assert "teacher: recipe" in proc.stderr  # the teacher recipe ran first
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "already finished" in again.stderr


ROBUSTNESS = """
name = "{name}"
seed = 0
[data]
dataset = "cifar10"
train_subset = 2000
test_subset = 200
[student]
model = "resnet8"
[method]
name = "{method}"
[attack]
steps = 5
[train]
epochs = 6
batch_size = 64
lr = 0.05
schedule = "onecycle"
[eval]
attacks = ["clean", "pgd20"]
"""


def test_pgd20_breaks_natural_training_and_pgd_at_resists(cifar_root, tmp_path):
    """The attack is strong (a natural model falls to ~0 %) and training against it works."""
    results = {}
    for method in ("natural", "pgd_at"):
        path = write(tmp_path / f"{method}.toml", ROBUSTNESS.format(name=f"robust_{method}", method=method))
        results[method] = run_recipe(load_recipe(path), tmp_path / method).result.dump()["metrics"]
    natural, adversarial = results["natural"], results["pgd_at"]
    assert natural["clean_acc"] > 0.25
    assert natural["robust"]["pgd20"] <= 0.05
    assert adversarial["robust"]["pgd20"] >= natural["robust"]["pgd20"] + 0.08
