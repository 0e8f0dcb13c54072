"""Honest evaluation, end to end: which images are evaluated (fixed, stratified, fingerprinted selections)
and a leaderboard that ranks only runs measured the same way (issue 13; the flags: test_evaluation_flags.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from kdbench._errors import RecipeError, UserError
from kdbench.build import build_data
from kdbench.data.sources import CIFAR10
from kdbench.engine.hardware import resolve_hardware
from kdbench.evaluation.sanity import (
    SERIOUS,
    check_class_coverage,
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
