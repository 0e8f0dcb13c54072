"""``kdbench eval``: a run folder or a weights file, eval.json, the eps sweep and its plot, user errors, and
the "more PGD steps never help" sanity check."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from kdbench._errors import UserError
from kdbench.commands.eval import add_eval_parser, cmd_eval
from kdbench.engine.progress import make_progress
from kdbench.evaluation import evaluate
from kdbench.evaluation.sanity import check_eps_monotone, check_steps_monotone, paired_noise_tolerance
from kdbench.evaluation.sanity import monotone as sanity_module
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe
from kdbench.testing import tiny_recipe

from .conftest import write

RECIPE = tiny_recipe(train_extra="deterministic = true")
FAKE_OPTIONS = ["--data-option", "image_size=16", "--data-option", "test_size=32", "--data-option", "train_size=64"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run for the whole module (its folder is copied by `run_dir`, never written)."""
    base = tmp_path_factory.mktemp("eval-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDBENCH_RUNS_DIR", str(base / "runs"))
        mp.setenv("KDBENCH_CACHE_DIR", str(base / "cache"))
        recipe = write(base / "tiny.toml", RECIPE)
        outcome = run_recipe(load_recipe(recipe), base / "run", progress=make_progress(quiet=True))
    return outcome.out_dir


@pytest.fixture
def run_dir(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst, ignore=shutil.ignore_patterns("checkpoints", ".lock"))
    return dst


def run_eval(*argv: object) -> dict:
    """Parse ``kdbench eval ARGV`` with the command's own parser, run it, return the eval.json written."""
    parser = argparse.ArgumentParser(prog="kdbench")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *map(str, argv)])
    assert args.handler is cmd_eval
    assert cmd_eval(args) == 0
    target = Path(args.target)
    out = args.out or (target / "eval.json" if target.is_dir() else target.parent / "eval.json")
    return json.loads(Path(out).read_text())


def test_run_folder_reproduces_result_json(run_dir, capsys):
    data = run_eval(run_dir)
    assert set(data) >= {"schema_version", "target", "model", "dataset", "threat_model", "metrics", "flags"}
    assert set(data) >= {"seconds", "env"}
    assert data["schema_version"] == 1
    assert data["target"] == str(run_dir)
    assert (data["model"], data["dataset"]) == ("resnet8", "fake")
    assert data["threat_model"] == {"norm": "Linf", "eps": "8/255"}
    assert data["attacks"] == ["clean"]  # the run's eval.attacks
    assert data["flags"] == []
    assert data["env"]["torch"] == torch.__version__
    assert "eps_sweep" not in data
    result = json.loads((run_dir / "result.json").read_text())
    assert data["metrics"] == result["metrics"]  # same network, test split, seed: same numbers
    assert data["evaluation"]["selection"] == result["evaluation"]["selection"]  # the same images as the run
    assert data["evaluation"]["protocol"] == result["evaluation"]["protocol"]
    assert data["flag_details"] == []
    out = capsys.readouterr().out
    assert "clean" in out and "worst" in out and str(run_dir / "eval.json") in out


def test_attacks_n_and_eps_zero(run_dir, tmp_path):
    data = run_eval(run_dir, "--attacks", "clean,fgsm", "pgd5", "--n", "16", "--out", tmp_path / "a.json")
    m = data["metrics"]
    assert m["n_eval"] == 16
    assert data["attacks"] == ["clean", "fgsm", "pgd5"]
    assert m["robust"]["pgd5"] is not None and m["robust"]["fgsm"] is not None
    assert m["robust"]["cw"] is None and m["robust"]["autoattack"] is None
    assert set(data["seconds"]) >= {"clean", "fgsm", "pgd5", "total"}

    zero = run_eval(run_dir, "--attacks", "clean", "pgd20", "--eps", "0", "--out", tmp_path / "z.json")
    assert zero["threat_model"]["eps"] == "0"
    assert zero["metrics"]["robust"]["pgd20"] == zero["metrics"]["clean_acc"]
    assert zero["flags"] == []


def test_eps_sweep_json_and_png(run_dir):
    data = run_eval(run_dir, "--eps-sweep", "--attacks", "clean")
    sweep = data["eps_sweep"]
    labels = [p["eps_label"] for p in sweep]
    assert labels == ["0", "1/255", "2/255", "4/255", "8/255", "12/255", "16/255", "32/255", "64/255"]
    eps = [p["eps"] for p in sweep]
    assert eps == sorted(eps) and eps[0] == 0 and eps[-1] == pytest.approx(64 / 255)
    # the step scales with eps: 2/255 at 8/255 (PGD-20's customary step), 16/255 at 64/255
    steps = {p["eps_label"]: p["step_size"] for p in sweep}
    assert steps["8/255"] == pytest.approx(2 / 255) and steps["64/255"] == pytest.approx(16 / 255)
    acc = [p["pgd20"] for p in sweep]
    n = data["metrics"]["n_eval"]
    assert acc[0] == data["metrics"]["clean_acc"]  # eps = 0: robust == clean
    assert all(b <= a + 2 / n for a, b in pairwise(acc))  # non-increasing up to noise
    assert acc[-1] <= 0.05  # and reaching ~0 (Carlini et al. 2019)
    assert not [f for f in data["flags"] if "eps sweep" in f]
    png = run_dir / data["eps_sweep_plot"]
    assert png == run_dir / "eps_sweep.png"
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_eps_sweep_custom_list_and_out_name(run_dir, tmp_path):
    data = run_eval(run_dir, "--eps-sweep", "4/255,0", "--attacks", "clean", "--n", "8", "--out", tmp_path / "x.json")
    assert [p["eps_label"] for p in data["eps_sweep"]] == ["0", "4/255"]
    assert (tmp_path / "x.eps_sweep.png").read_bytes().startswith(PNG_MAGIC)


def test_weights_file(run_dir, tmp_path):
    reference = run_eval(run_dir, "--attacks", "clean", "--out", tmp_path / "ref.json")["metrics"]["clean_acc"]
    weights = run_dir / "model.pt"
    # A kdbench model file records its model; --model may still name it.
    data = run_eval(weights, "--model", "resnet8", "--dataset", "fake", *FAKE_OPTIONS, "--attacks", "clean")
    assert data["kind"] == "weights"
    assert data["metrics"]["clean_acc"] == reference
    assert (run_dir / "eval.json").is_file()  # next to the weights file
    # A bare state_dict needs --model.
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(weights, weights_only=True)["state_dict"], bare)
    data = run_eval(bare, "--model", "resnet8", "--dataset", "fake", *FAKE_OPTIONS, "--attacks", "clean")
    assert data["metrics"]["clean_acc"] == reference
    assert (tmp_path / "eval.json").is_file()
    with pytest.raises(UserError, match="--model"):
        run_eval(bare, "--dataset", "fake", *FAKE_OPTIONS)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["{missing}"], "not found"),
        (["{unfinished}"], "the run is not finished"),
        (["{run}", "--n", "33"], "--n: asks for 33 evaluation images but the test set has 32"),
        (["{run}", "--eps", "abc"], "not a number"),
        (["{run}", "--eps", "3"], "eps above 1"),
        (["{run}", "--attacks", "pgdx"], "unknown evaluation attack"),
        (["{run}", "--model", "resnet8"], "for a weights file"),
        (["{run}", "--eps-sweep", "0,-1/255"], "eps must be >= 0"),
        (["{weights}", "--model", "resnet8x", "--dataset", "fake"], "unknown model 'resnet8x'"),
        (["{weights}", "--dataset", "fakee"], "unknown dataset 'fakee'"),
        (["{weights}"], "--dataset"),
        (["{weights}", "--dataset", "fake", "--data-option", "imagesize=16"], "did you mean 'image_size'"),
    ],
)
def test_user_errors(run_dir, tmp_path, argv, match):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "recipe.toml", unfinished)
    paths = {"missing": tmp_path / "nope", "unfinished": unfinished, "run": run_dir, "weights": run_dir / "model.pt"}
    with pytest.raises(UserError, match=match):
        run_eval(*[a.format(**{k: str(v) for k, v in paths.items()}) for a in argv])
    assert not (tmp_path / "eval.json").exists()


def test_check_steps_flag_free_on_tiny_model(run_dir, tmp_path):
    data = run_eval(run_dir, "--attacks", "clean", "--check-steps", "--out", tmp_path / "s.json")
    assert "steps_check" in data["seconds"]
    assert data["flags"] == []


def test_cli_wiring(run_dir, capsys):
    from kdbench import cli

    assert cli.COMMAND_MODULES["eval"] == "kdbench.commands.eval"
    assert cli.main(["eval", str(run_dir), "--attacks", "clean"]) == 0
    assert (run_dir / "eval.json").is_file()
    assert cli.main(["eval", str(run_dir / "nope")]) == 2
    assert "kdbench: error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- the sanity checks themselves


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.flatten(1))


def _data(net: nn.Module, n: int = 64) -> tuple[Tensor, Tensor]:
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, net(x).argmax(1)  # every sample classified correctly


def test_steps_check_flags_an_attack_weaker_with_more_steps(monkeypatch):
    net = Linear().eval()
    x, y = _data(net)
    rng = torch.get_rng_state()
    assert check_steps_monotone(net, x, y, eps=8 / 255) == []
    assert torch.equal(torch.get_rng_state(), rng)

    real_pgd = sanity_module.pgd

    def masked_pgd(model_fn, x, objective, *, steps, **kw):  # strong for few steps, useless for many
        return x.clone() if steps >= 50 else real_pgd(model_fn, x, objective, steps=steps, **{**kw, "eps": 1.0})

    monkeypatch.setattr(sanity_module, "pgd", masked_pgd)
    flags = check_steps_monotone(net, x, y, eps=8 / 255, batch_size=16)
    assert len(flags) == 2  # pgd50 vs pgd10 and vs pgd20
    assert all(f.startswith("pgd50 robust accuracy") for f in flags)
    with pytest.raises(ValueError, match="two distinct"):
        check_steps_monotone(net, x, y, eps=8 / 255, steps=(20, 20))


def test_evaluate_steps_check_is_opt_in():
    net = Linear().eval()
    x, y = _data(net, 16)
    assert "steps_check" not in evaluate(net, x, y, ["clean"]).seconds
    report = evaluate(net, x, y, ["clean", "pgd5"], steps_check=True)
    assert "steps_check" in report.seconds
    assert report.flags == []


def test_paired_noise_tolerance_and_eps_monotone():
    assert paired_noise_tolerance(10_000, 0) == 0.01
    assert paired_noise_tolerance(100, 25) == pytest.approx(2 * math.sqrt(25) / 100)
    base = torch.zeros(100, dtype=torch.bool)
    base[:50] = True
    noisy = base.clone()
    noisy[50:53] = True  # 3 more robust at the larger eps: within noise
    assert check_eps_monotone({0.0: base, 1 / 255: noisy}) == []
    wrong = base.clone()
    wrong[50:80] = True  # 30 more: far outside noise
    flags = check_eps_monotone({8 / 255: wrong, 0.0: base})  # order of the mapping does not matter
    assert len(flags) == 1 and "eps sweep" in flags[0]


def test_update_result_rewrites_the_evaluation_and_keeps_the_original(run_dir):
    before = json.loads((run_dir / "result.json").read_text())
    data = run_eval(run_dir, "--attacks", "clean,pgd5", "--n", "20", "--update-result")
    after = json.loads((run_dir / "result.json").read_text())
    assert after["metrics"] == data["metrics"] and after["metrics"]["n_eval"] == 20
    assert after["metrics"]["robust"]["pgd5"] == after["metrics"]["counts"]["pgd5"] / 20
    assert after["evaluation"] == data["evaluation"] and after["evaluation"]["selection"]["n"] == 20
    assert after["train"] == before["train"] and after["recipe_hash"] == before["recipe_hash"]
    assert after["reevaluated"]["kdbench"] == data["env"]["kdbench"]
    assert json.loads((run_dir / "result.json.orig").read_text()) == before
    with pytest.raises(UserError, match="--update-result"):
        run_eval(run_dir / "model.pt", "--dataset", "fake", "--update-result")


def test_examples_file_and_bad_selections(run_dir, tmp_path):
    listing = tmp_path / "idx.txt"
    listing.write_text("# five images\n3, 1 4\n15 9\n")
    data = run_eval(run_dir, "--examples", listing, "--out", tmp_path / "e.json")
    selection = data["evaluation"]["selection"]
    assert selection["rule"] == "explicit" and selection["n"] == 5 and sum(selection["per_class"]) == 5
    for text, match in (("3 40", "--examples: index 40 out of range"), ("3 3", "--examples: index 3 is listed twice")):
        listing.write_text(text)
        with pytest.raises(UserError, match=match):
            run_eval(run_dir, "--examples", listing)
    listing.write_text("1 2")
    with pytest.raises(UserError, match="--n: asks for 3 evaluation images but --examples lists 2"):
        run_eval(run_dir, "--examples", listing, "--n", "3")
