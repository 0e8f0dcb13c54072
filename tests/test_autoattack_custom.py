"""AutoAttack's custom version (APGD-CE + APGD-T) for development: named as such, never as AutoAttack,
with per-attack progress and AutoAttack's own log lines in the run's log (issue 18, point 3)."""

from __future__ import annotations

import json

import pytest
import torch

from kdbench.engine.progress import make_progress
from kdbench.evaluation import evaluate
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe
from kdbench.testing import tiny_recipe

from .conftest import write

pytest.importorskip("pyautoattack", reason="AutoAttack evaluations need pyautoattack")

RECIPE = tiny_recipe(
    "aa_custom", seed=None, test_size=16, attacks=("clean", "pgd5", "autoattack_custom"), eval_extra="batch_size = 8"
)


def _linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))


def test_custom_version_asks_pyautoattack_for_apgd_ce_and_apgd_t(monkeypatch):
    import kdbench.evaluation.autoattack as aa

    made: list[dict] = []
    real = aa.require_autoattack()

    class Recording(real):  # the real class, so its own version checks still apply
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

        def run_standard_evaluation(self, x, y, batch_size=250):
            made[-1]["attacks_to_run"] = list(self.attacks_to_run)
            made[-1]["targets"] = self.apgd_targeted.n_target_classes
            return x.clone(), y.clone()

    monkeypatch.setattr(aa, "require_autoattack", lambda: Recording)
    model = _linear_model()
    images = torch.rand(4, 3, 8, 8)
    report = evaluate(model, images, model(images).argmax(1), ["clean", "autoattack_custom"], sanity=False)
    assert made[0]["version"] == "custom" and made[0]["attacks_to_run"] == ["apgd-ce", "apgd-t"]
    assert made[0]["targets"] == 9  # the standard version's APGD-T setting
    assert report.robust["autoattack"] is None and report.robust["autoattack_custom"] == 1.0


@pytest.mark.slow
def test_custom_version_runs_apgd_ce_and_apgd_t_only_and_reports_progress():
    torch.manual_seed(1)
    model = _linear_model()
    images = torch.rand(4, 3, 8, 8)
    labels = model(images).argmax(1)  # all correct on x: both attacks have points to work on
    lines: list[str] = []
    report = evaluate(
        model,
        images,
        labels,
        ["clean", "pgd3", "autoattack_custom"],
        eps=0.2 / 255,
        batch_size=4,
        on_progress=lines.append,
    )
    assert report.robust["autoattack"] is None  # never reported as AutoAttack
    assert report.robust["autoattack_custom"] is not None
    assert report.robust["autoattack_custom"] <= report.clean_acc
    text = "\n".join(lines)
    assert "pgd3: 4/4 examples, robust accuracy" in text
    assert "autoattack: running apgd-ce" in text and "autoattack: running apgd-t" in text
    assert "fab" not in text.lower() and "square" not in text.lower()
    assert "autoattack: robust accuracy after APGD-T" in text


@pytest.mark.slow
def test_custom_version_lands_in_result_json_under_its_own_name(tmp_path):
    recipe = write(tmp_path / "r.toml", RECIPE)
    outcome = run_recipe(load_recipe(recipe), tmp_path / "out", progress=make_progress(quiet=True))
    result = json.loads((outcome.out_dir / "result.json").read_text())
    robust = result["metrics"]["robust"]
    assert robust["autoattack"] is None and isinstance(robust["autoattack_custom"], float)
    log = (outcome.out_dir / "train.log").read_text()
    assert "autoattack: running apgd-ce" in log and "pgd5: 16/16 examples" in log
