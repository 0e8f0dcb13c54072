"""kdbench.analysis: linear CKA, class-correlation distance, feature stability, and `kdbench analyze` end to end."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from kdbench import _toml
from kdbench.analysis import (
    adversarial_inputs,
    class_correlation_distance,
    linear_cka,
    logit_correlation,
    relative_feature_change,
)
from kdbench.cli import main
from kdbench.models.base import NetworkSpec
from kdbench.testing import TinyNet

from .conftest import write


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019 eq. (3)-(4), computed independently: HSIC with the centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


# ------------------------------------------------------------------------------------ CKA


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("n", "d1", "d2"), [(60, 5, 9), (12, 40, 30)])  # feature form, then Gram form
def test_cka_matches_the_hsic_definition(n, d1, d2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d1, generator=g)
    y = x[:, :1] * torch.randn(1, d2, generator=g) + torch.randn(n, d2, generator=g)
    assert linear_cka(x, y) == pytest.approx(_hsic_cka(x.double().numpy(), y.double().numpy()), rel=1e-9)


def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(80, 6, generator=g, dtype=torch.float64)
    y = x @ torch.randn(6, 10, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        80, 10, generator=g, dtype=torch.float64
    )
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.2 < base < 0.99
    assert linear_cka(x, y @ q) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x + 5.0, y - 2.0) == pytest.approx(base, rel=1e-10)  # centred: offsets do not matter
    # ... but not to a general invertible linear map (which CCA would ignore)
    stretch = torch.diag(torch.tensor([1.0, 30.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert abs(linear_cka(x @ stretch, y) - base) > 1e-3


def test_cka_of_independent_features_is_small():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2000, 8, generator=g), torch.randn(2000, 12, generator=g)
    assert linear_cka(x, y) < 0.03


def test_cka_edge_cases():
    x = torch.randn(10, 3)
    assert math.isnan(linear_cka(x, torch.ones(10, 4)))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, torch.randn(9, 3))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        linear_cka(x.flatten(), x)


# ------------------------------------------------------------------------------------ correlation / stability


def test_logit_correlation_matches_numpy():
    z = torch.randn(40, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert np.allclose(logit_correlation(z).numpy(), np.corrcoef(z.numpy(), rowvar=False), atol=1e-12)


def test_class_correlation_distance():
    g = torch.Generator().manual_seed(5)
    t = torch.randn(100, 4, generator=g)
    assert class_correlation_distance(t, t) == 0.0
    assert class_correlation_distance(t, 2 * t + 1) == pytest.approx(0.0, abs=1e-7)  # correlation ignores affine maps
    s = torch.randn(100, 4, generator=g)
    ct, cs = np.corrcoef(t.numpy(), rowvar=False), np.corrcoef(s.numpy(), rowvar=False)
    off = ~np.eye(4, dtype=bool)
    assert class_correlation_distance(t, s) == pytest.approx(np.abs(ct - cs)[off].mean(), rel=1e-6)
    constant = s.clone()
    constant[:, 2] = 1.0
    assert math.isfinite(class_correlation_distance(t, constant))
    with pytest.raises(ValueError, match="classes must be the same"):
        class_correlation_distance(t, s[:, :3])


def test_relative_feature_change():
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert relative_feature_change(f, f) == 0.0
    assert relative_feature_change(f, 1.1 * f) == pytest.approx(0.1)
    assert relative_feature_change(f, f + torch.tensor([[0.0, 5.0], [0.0, 0.0]])) == pytest.approx(0.5)


def test_adversarial_inputs_stay_in_the_ball_and_are_seeded():
    torch.manual_seed(0)
    net = TinyNet(NetworkSpec(10, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).eval()
    x = torch.rand(6, 3, 8, 8)
    y = torch.randint(0, 10, (6,))
    state = torch.get_rng_state()
    a = adversarial_inputs(net, x, y, eps=8 / 255, steps=3, batch_size=4, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    b = adversarial_inputs(net, x, y, eps=8 / 255, steps=3, batch_size=4, seed=7)
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= 8 / 255
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, x)


# ------------------------------------------------------------------------------------ kdbench analyze


RECIPE = """
name = "{name}"
seed = 0
[data]
dataset = "fake"
options = {{train_size = 64, test_size = 40, image_size = 16}}
[student]
model = "resnet8"
[method]
name = "{method}"
[train]
epochs = 1
batch_size = 32
[eval]
attacks = ["clean"]
"""


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """One tiny teacher for the module, run into ``<root>/runs/teacher/<hash>`` (trained once, then only read)."""
    root = tmp_path_factory.mktemp("teacher")
    with pytest.MonkeyPatch.context() as mp:  # what tests/conftest.py's autouse fixture does, at module scope
        mp.setenv("KDBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "decode-cache"))
        teacher = write(root / "recipes" / "teacher.toml", RECIPE.format(name="teacher", method="natural"))
        assert main(["run", str(teacher), "--runs-dir", str(root / "runs"), "--quiet"]) == 0
    (run,) = (root / "runs" / "teacher").iterdir()
    return run


def test_analyze_end_to_end_writes_analysis(tmp_path, teacher_run, capsys):
    student = write(
        tmp_path / "recipes" / "student.toml",
        RECIPE.format(name="student", method="kd")
        + f'[teacher]\nmodel = "resnet8"\ncheckpoint = "{teacher_run / "model.pt"}"\n',
    )
    run = tmp_path / "student_run"
    assert main(["run", str(student), "--out", str(run), "--quiet"]) == 0
    before = json.loads((run / "result.json").read_text())
    capsys.readouterr()

    assert main(["analyze", str(run), "--n", "24", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "CKA(teacher, student) clean" in out
    after = json.loads((run / "result.json").read_text())
    a = after.pop("analysis")
    assert after == before  # nothing else changed
    assert a["n"] == 24
    assert a["attack"] == "pgd20"
    assert a["threat_model"] == {"norm": "Linf", "eps": "8/255"}
    for key in ("cka_clean", "cka_adv"):
        assert 0.0 <= a[key] <= 1.0 + 1e-9
    assert 0.0 <= a["class_corr_distance"] <= 2.0
    assert a["feature_change"] > 0.0
    # the leaderboard shows the analysis columns when a run has them
    assert main(["leaderboard", str(tmp_path), "--format", "md"]) == 0
    assert "| CKA | CKA adv | corr. dist. | feat. change |" in capsys.readouterr().out


def test_analyze_asks_for_the_teacher_when_the_recipe_path_does_not_resolve(tmp_path, teacher_run, capsys):
    runs = teacher_run.parent.parent  # the student's run lands beside the teacher's, which it reuses
    teacher_recipe = runs.parent / "recipes" / "teacher.toml"
    relative = os.path.relpath(teacher_recipe, tmp_path / "recipes")
    student = write(
        tmp_path / "recipes" / "student.toml",
        RECIPE.format(name="student", method="kd") + f'[teacher]\nrecipe = "{relative}"\n',
    )
    assert main(["run", str(student), "--runs-dir", str(runs), "--quiet"]) == 0
    (run,) = (runs / "student").iterdir()
    # Today's folders name the teacher run's weights: analyze needs nothing else.
    assert main(["analyze", str(run), "--n", "8"]) == 0
    # A folder of an older kdbench kept the teacher recipe's path relative to the original recipe's folder,
    # which does not resolve from the run folder (and the teacher run is not beside the student's).
    raw = _toml.load_file(run / "recipe.toml")
    raw.pop("run")
    raw["teacher"] = {"model": raw["teacher"]["model"], "recipe": relative, "options": raw["teacher"]["options"]}
    header = "\n".join((run / "recipe.toml").read_text().splitlines()[:2])
    (run / "recipe.toml").write_text(_toml.dumps(raw, header=header.replace("# ", "")))
    capsys.readouterr()
    assert main(["analyze", str(run), "--n", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"teacher.recipe {relative!r} does not resolve" in err
    assert "--teacher-checkpoint PATH" in err

    assert main(["analyze", str(run), "--n", "8", "--teacher-checkpoint", str(teacher_run)]) == 0
    assert json.loads((run / "result.json").read_text())["analysis"]["n"] == 8

    # where the path does resolve, the teacher's finished run is found by the teacher recipe's hash
    (run / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(teacher_recipe, run / relative)
    assert main(["analyze", str(run), "--n", "8"]) == 0
    assert json.loads((run / "result.json").read_text())["analysis"]["teacher_weights"] == str(teacher_run)


def test_analyze_rejects_runs_without_a_teacher(teacher_run, capsys):
    assert main(["analyze", str(teacher_run)]) == 2
    assert "trained without a teacher" in capsys.readouterr().err


def test_analyze_builds_each_network_with_the_normalisation_it_was_trained_with(
    tmp_path, teacher_run, capsys, monkeypatch
):
    """A student trained on raw pixels (``student.normalize = "none"``) beside a teacher that normalises with
    the dataset's statistics: the analysed networks compute what ``kdbench eval`` evaluates for each run."""
    import argparse

    from kdbench.commands import analyze
    from kdbench.commands.eval import add_eval_parser
    from kdbench.evaluation.targets import _load_target

    student = write(
        tmp_path / "recipes" / "student.toml",
        RECIPE.format(name="student", method="kd").replace(
            'model = "resnet8"\n', 'model = "resnet8"\nnormalize = "none"\n'
        )
        + f'[teacher]\nmodel = "resnet8"\ncheckpoint = "{teacher_run / "model.pt"}"\n',
    )
    run = tmp_path / "student_run"
    assert main(["run", str(student), "--out", str(run), "--quiet"]) == 0
    seen = []
    real_outputs = analyze._outputs

    def spy(net, images, batch_size, device):
        seen.append(net)
        return real_outputs(net, images, batch_size, device)

    monkeypatch.setattr(analyze, "_outputs", spy)
    assert main(["analyze", str(run), "--n", "8"]) == 0
    analysed_student, analysed_teacher = seen[0], seen[1]

    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for analysed, folder in ((analysed_student, run), (analysed_teacher, teacher_run)):
        evaluated = _load_target(parser.parse_args(["eval", str(folder)])).net.eval()
        with torch.no_grad():
            assert torch.equal(analysed(x), evaluated(x)), folder
