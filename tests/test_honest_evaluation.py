"""Honest evaluation: which images are evaluated, masking / weak-attack flags with severities, scaled
steps, exact accuracies, and a leaderboard that ranks only runs measured the same way (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from kdbench._errors import RecipeError, UserError
from kdbench.build import build_data
from kdbench.data.sources import CIFAR10
from kdbench.engine.hardware import resolve_hardware
from kdbench.evaluation import evaluate
from kdbench.evaluation.attack_setup import attack_settings, default_step_size
from kdbench.evaluation.sanity import (
    SERIOUS,
    WARNING,
    Flag,
    check_below_reference,
    check_class_coverage,
    check_unbounded,
    paired_noise_tolerance,
)
from kdbench.evaluation.selection import SELECTION_SEED, select_examples
from kdbench.leaderboard.collect import collect
from kdbench.leaderboard.formats import render_markdown
from kdbench.leaderboard.group import build_boards
from kdbench.leaderboard.render import DEFAULT_COLUMNS
from kdbench.recipe import load_recipe

from .conftest import write

# ------------------------------------------------------------------------------------ selection


def test_stratified_selection_of_a_class_sorted_split_covers_every_class():
    labels = torch.arange(10).repeat_interleave(100)  # an ImageFolder split: class after class
    images = torch.zeros(1000, 3, 2, 2, dtype=torch.uint8)
    sel = select_examples(images, labels, canonical=False, n=50)
    assert sel.rule == "stratified" and sel.per_class == (5,) * 10 and sel.classes_covered == 10
    assert sel.indices.tolist() == sorted(sel.indices.tolist())  # evaluated in split order
    bigger = select_examples(images, labels, canonical=False, n=120)
    assert set(sel.indices.tolist()) <= set(bigger.indices.tolist())  # nested: larger N contains smaller
    again = select_examples(images, labels, canonical=False, n=50)
    assert again.eval_set_sha256 == sel.eval_set_sha256 and SELECTION_SEED == 0
    first = select_examples(images, labels, canonical=True, n=50)
    assert first.rule == "first-n" and first.indices.tolist() == list(range(50)) and first.per_class[0] == 50
    assert first.eval_set_sha256 != sel.eval_set_sha256
    assert check_class_coverage(first.per_class)[0].severity == SERIOUS
    assert check_class_coverage(sel.per_class) == []


def test_fingerprints_follow_the_pixels_not_the_path():
    labels = torch.arange(4).repeat(5)
    images = torch.randint(0, 255, (20, 3, 4, 4), dtype=torch.uint8)
    a = select_examples(images, labels, canonical=False, n=8)
    changed = images.clone()
    changed[a.indices[0], 0, 0, 0] ^= 1
    b = select_examples(changed, labels, canonical=False, n=8)
    assert a.indices_sha256 == b.indices_sha256 and a.eval_set_sha256 != b.eval_set_sha256
    explicit = select_examples(images, labels, canonical=False, n=None, examples=a.indices.flip(0).tolist())
    assert explicit.rule == "explicit" and explicit.eval_set_sha256 == a.eval_set_sha256  # same images


@pytest.mark.parametrize(
    ("n", "examples", "match"),
    [
        (21, None, "eval.n_examples: asks for 21 evaluation images but the test set has 20; use at most 20"),
        (None, [0, 20], "eval.examples: index 20 out of range"),
        (None, [-1], "eval.examples: index -1 out of range"),
        (None, [3, 5, 3], "eval.examples: index 3 is listed twice"),
        (3, [1, 2], "eval.n_examples: asks for 3 evaluation images but eval.examples lists 2"),
        (None, [], "eval.examples: the selection is empty"),
    ],
)
def test_bad_selections_are_one_line_errors_naming_the_key(n, examples, match):
    labels = torch.arange(4).repeat(5)
    with pytest.raises(UserError, match=match) as err:
        select_examples(torch.zeros(20, 3, 2, 2, dtype=torch.uint8), labels, canonical=False, n=n, examples=examples)
    assert "\n" not in str(err.value)


def test_cifar_files_have_a_canonical_order_an_image_folder_does_not(monkeypatch, tmp_path):
    source = CIFAR10(CIFAR10.Config(), tmp_path, False)
    monkeypatch.setattr(CIFAR10, "_layout", lambda self, split: "torchvision")
    assert source.canonical_test_order()
    monkeypatch.setattr(CIFAR10, "_layout", lambda self, split: "folder")
    assert not source.canonical_test_order()


def _image_folder(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(folder / f"{i:04d}.png")
    return root


IMAGEFOLDER_RECIPE = """
name = "sel"
seed = {seed}
[data]
dataset = "imagefolder"
root = "{root}"
{data_extra}
[student]
model = "resnet8"
[method]
name = "natural"
[eval]
attacks = ["clean"]
{eval_extra}
"""


def _bundle(tmp_path: Path, seed: int = 0, data_extra: str = "", eval_extra: str = "n_examples = 6"):
    root = tmp_path / "tree"
    if not root.exists():
        _image_folder(root)
    text = IMAGEFOLDER_RECIPE.format(seed=seed, root=root, data_extra=data_extra, eval_extra=eval_extra)
    recipe = load_recipe(write(tmp_path / f"r{seed}.toml", text))
    return build_data(recipe, resolve_hardware("cpu", "fp32", False, False, 0))


def test_run_evaluates_every_class_of_an_image_folder_whatever_the_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    a, b = _bundle(tmp_path, seed=0), _bundle(tmp_path, seed=7)
    assert a.selection is not None and b.selection is not None
    # The old "first N" took 6 images of class 0; now 2 of each class, the same for every seed.
    assert a.selection.per_class == (2, 2, 2) and a.selection.rule == "stratified"
    assert torch.equal(a.test_labels.bincount(), torch.tensor([2, 2, 2]))
    assert a.selection.eval_set_sha256 == b.selection.eval_set_sha256
    old_name = _bundle(tmp_path, data_extra="test_subset = 6", eval_extra="")
    assert old_name.selection is not None and old_name.selection.eval_set_sha256 == a.selection.eval_set_sha256


def test_recipe_selection_errors_name_file_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(
        RecipeError, match=r"r0\.toml: eval\.n_examples: asks for 19 evaluation images but the test set has 18"
    ):
        _bundle(tmp_path, eval_extra="n_examples = 19")
    with pytest.raises(RecipeError, match=r"r0\.toml: eval\.examples: index 5 is listed twice"):
        _bundle(tmp_path, eval_extra="examples = [5, 5]")
    with pytest.raises(
        RecipeError, match=r"data\.test_subset: the evaluation size is given twice.*eval\.n_examples = 4"
    ):
        _bundle(tmp_path, data_extra="test_subset = 4", eval_extra="n_examples = 6")
    (tmp_path / "idx.json").write_text("[0, 17, 9]")
    chosen = _bundle(tmp_path, eval_extra='examples = "idx.json"')
    assert chosen.selection is not None and chosen.selection.indices.tolist() == [0, 17, 9]


# ------------------------------------------------------------------------------------ models for the checks


class Linear(nn.Module):
    """An honest differentiable classifier of 3x16x16 images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.flatten(1))


class Quantised(nn.Module):
    """Input quantised to 4 levels without a straight-through gradient: the gradient is exactly zero."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * 3) / 3)


class ScaledLogits(nn.Module):
    """Logits x 1e4: the softmax saturates and the cross-entropy's gradient underflows to zero."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * 1e4


class SoftmaxOutput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(dim=1)


class RandomisedInput(nn.Module):
    """Gaussian noise on the input at every pass, in eval mode too (a randomised defence)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def _data(net: nn.Module, n: int = 48) -> tuple[Tensor, Tensor]:
    """Images the honest model classifies correctly (its own predictions as labels)."""
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return x, net(x).argmax(1)


ATTACKS = ["clean", "fgsm", "pgd20", "cw"]


def _checks(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255) -> dict[str, str]:
    """check name -> severity of every flag ``evaluate`` raises (a cheap black box: 100 queries)."""
    report = evaluate(model, x, y, ATTACKS, eps=eps, batch_size=64, black_box_queries=100)
    flags = [f for f in report.flags if isinstance(f, Flag)]
    assert len(flags) == len(report.flags)  # every flag carries its severity
    return {f.check: f.severity for f in flags}


def test_honest_model_trips_no_flag():
    net = Linear()
    x, y = _data(net)
    assert _checks(net, x, y, eps=2 / 255) == {}
    assert _checks(net, x, y) == {}


def test_quantised_input_without_straight_through_gradient_is_caught():
    net = Quantised(Linear())
    x, y = _data(net)
    checks = _checks(net, x, y)
    # PGD, FGSM and CW all stand still (= clean); only kdbench's own checks see through it.
    assert checks["input_gradients"] == SERIOUS
    assert checks["unbounded"] == SERIOUS
    assert checks["black_box"] == SERIOUS


def test_scaled_logits_are_caught_by_the_zero_gradient_share():
    net = ScaledLogits(Linear())
    x, y = _data(net)
    assert _checks(net, x, y)["input_gradients"] == SERIOUS


def test_softmax_output_is_flagged_serious():
    net = SoftmaxOutput(Linear())
    x, y = _data(net)
    assert _checks(net, x, y)["logits"] == SERIOUS


def test_randomised_model_is_flagged_serious():
    net = RandomisedInput(Linear())
    x, y = _data(Linear())
    assert _checks(net, x, y)["deterministic"] == SERIOUS


def test_unbounded_check_scales_its_step_and_passes_an_honest_model():
    net = Linear()
    x, y = _data(net, 16)
    assert check_unbounded(net, x, y) == []
    assert check_unbounded(net, x, y, norm="l2") == []
    # With the old fixed 2/255 step, 20 steps travel at most 40/255: far from "any image".
    stuck = Quantised(Linear())
    flags = check_unbounded(stuck, x, stuck(x).argmax(1).detach())
    assert flags and flags[0].values["step_size"] == pytest.approx(0.25)


def test_attacks_below_pgd20_beyond_noise_say_which_to_trust():
    n = 400
    pgd = torch.zeros(n, dtype=torch.bool)
    pgd[:200] = True
    aa = pgd.clone()
    aa[:8] = False  # 2 points lower, beyond the noise 2 sqrt(8) / 400 = 1.4 points
    cw = pgd.clone()
    cw[:30] = False  # 7.5 points lower
    close = pgd.clone()
    close[:3] = False  # 0.75 points: noise
    flags = {f.check: f for f in check_below_reference({"pgd20": pgd, "autoattack": aa, "cw": cw})}
    assert flags["autoattack_below_pgd20"].severity == WARNING
    assert "trust autoattack" in flags["autoattack_below_pgd20"]
    assert flags["cw_below_pgd20"].severity == SERIOUS and "trust cw" in flags["cw_below_pgd20"]
    assert check_below_reference({"pgd20": pgd, "autoattack": close}) == []
    assert paired_noise_tolerance(n, 8) == pytest.approx(2 * 8**0.5 / n)


# ------------------------------------------------------------------------------------ steps and counts


def test_step_sizes_scale_with_eps_and_can_be_pinned():
    assert default_step_size(8 / 255, 20) == pytest.approx(2 / 255)  # the customary PGD-20 step
    assert default_step_size(64 / 255, 20) == pytest.approx(16 / 255)
    assert default_step_size(8 / 255, 5) == pytest.approx(4 / 255)  # few steps still travel 2.5 eps
    settings = attack_settings(["clean", "pgd20", "cw", "fgsm"], eps=64 / 255, norm="linf")
    assert settings["pgd20"]["step_size"] == pytest.approx(16 / 255) and settings["cw"]["steps"] == 30
    assert settings["pgd20"]["step_rule"] == "max(eps/4, 2.5*eps/steps)"
    pinned = attack_settings(["pgd20"], eps=64 / 255, norm="linf", step_size=2 / 255)
    assert pinned["pgd20"] == {**pinned["pgd20"], "step_size": 2 / 255, "step_rule": "pinned"}


def test_pgd20_at_a_large_eps_is_no_weaker_than_fgsm():
    net = Linear()
    x, y = _data(net)
    report = evaluate(net, x, y, ["clean", "fgsm", "pgd20"], eps=64 / 255, sanity=False)
    assert report.settings["pgd20"]["step_size"] == pytest.approx(16 / 255)
    assert report.robust["pgd20"] <= report.robust["fgsm"]


def test_accuracies_are_exact_fractions_of_stored_counts():
    net = Linear()
    x, y = _data(net, 50)
    y[:7] = (y[:7] + 1) % 10  # 43 of 50 right
    report = evaluate(net, x, y, ["clean", "fgsm"], sanity=False)
    d = report.to_dict()
    assert d["counts"]["clean"] == 43 and d["clean_acc"] == 0.86 and repr(d["clean_acc"]) == "0.86"
    assert d["robust"]["fgsm"] == d["counts"]["fgsm"] / 50 and d["robust"]["worst"] == d["counts"]["worst"] / 50


# ------------------------------------------------------------------------------------ leaderboard


def _result(tmp_path: Path, name: str, pgd: float, eval_set: str, serious: bool = False, covered: int = 10) -> None:
    folder = tmp_path / name
    folder.mkdir()
    details = (
        [{"check": "input_gradients", "severity": "serious", "message": "masked", "values": {}}] if serious else []
    )
    result = {
        "schema_version": 1,
        "name": name,
        "recipe_hash": name,
        "method": "kd",
        "teacher": "t",
        "student": "s",
        "dataset": "cifar10",
        "threat_model": {"norm": "Linf", "eps": "8/255"},
        "metrics": {"clean_acc": 0.8, "robust": {"pgd20": pgd}, "n_eval": 500},
        "flags": ["masked"] if serious else [],
        "flag_details": details,
        "evaluation": {
            "selection": {
                "rule": "stratified",
                "n": 500,
                "num_classes": 10,
                "classes_covered": covered,
                "eval_set_sha256": eval_set,
            },
            "protocol": "p1",
        },
        "seed": 0,
    }
    (folder / "result.json").write_text(json.dumps(result))


def test_leaderboard_ranks_together_only_runs_evaluated_on_the_same_images(tmp_path):
    _result(tmp_path, "a", 0.5, "set1")
    _result(tmp_path, "b", 0.4, "set1", serious=True)
    _result(tmp_path, "c", 0.6, "set2", covered=1)
    boards = build_boards(collect([tmp_path], report=None).runs)
    assert [sorted(v.label for v in b.variants) for b in boards] == [["a", "b"], ["c"]]
    assert all("differ in evaluation images" in b.note for b in boards)
    same = {v.label: v for v in boards[0].variants}
    assert same["b"].unreliable and not same["a"].unreliable
    (c,) = boards[1].variants
    assert c.unreliable and any("1 of 10 classes" in text for text in c.flag_texts)
    text = render_markdown(boards, DEFAULT_COLUMNS)
    assert "b ⚠ unreliable" in text and "a ⚠" not in text
