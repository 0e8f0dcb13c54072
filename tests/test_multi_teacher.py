"""Additional named teachers end to end: MTARD's robust and natural teachers from two recipes, its
per-step state through a mid-epoch signal and resume, and the one-line errors of bad teachers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdbench import RecipeError
from kdbench.engine.checkpoint import CheckpointStore
from kdbench.engine.trainer import Interrupted, Trainer
from kdbench.recipe import ResolvedRecipe, load_recipe
from kdbench.run import run_recipe

from .conftest import write

TEACHER = """
name = "{name}"
seed = {seed}
[data]
dataset = "fake"
options = {{train_size = 64, test_size = 16, image_size = {size}, num_classes = {classes}}}
[student]
model = "resnet8"
[method]
name = "natural"
[train]
epochs = 1
batch_size = 32
deterministic = true
[eval]
attacks = ["clean"]
"""

STUDENT = """
name = "mtard_student"
seed = 1
[data]
dataset = "fake"
options = {train_size = 96, test_size = 16, image_size = 8}
[teacher]
recipe = "robust.toml"
[teachers.natural]
recipe = "natural.toml"
[student]
model = "resnet8"
[method]
name = "mtard"
[attack]
steps = 1
eps_schedule = [{epoch = 0, eps = "4/255"}, {epoch = 1, eps = "8/255"}]
[train]
epochs = 2
batch_size = 32
deterministic = true
[eval]
attacks = ["clean"]
"""


def _teachers(folder, *, size=8, classes=10):
    write(folder / "robust.toml", TEACHER.format(name="robust", seed=0, size=8, classes=10))
    write(folder / "natural.toml", TEACHER.format(name="natural", seed=5, size=size, classes=classes))


def _final_state(out):
    store = CheckpointStore(out / "checkpoints")
    return store.load_latest()[1]


def test_two_teachers_train_and_resume_bitwise_with_the_methods_state(tmp_path, monkeypatch):
    _teachers(tmp_path)
    path = write(tmp_path / "student.toml", STUDENT)
    resolved = load_recipe(path)
    assert set(resolved.extra_teacher_recipes) == {"natural"}
    assert resolved.to_dict()["teachers"]["natural"]["model"] == "resnet8"
    reference = run_recipe(resolved, tmp_path / "ref", runs_dir=tmp_path / "runs").out_dir
    rows = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["attack_eps"] for r in rows] == pytest.approx([4 / 255, 8 / 255])
    assert {"loss/kl_adv", "loss/kl_nat"} <= rows[0].keys()
    ref_state = _final_state(reference)
    assert ref_state["method"]["natural_weight"].item() != 0.5  # the weights moved over 6 steps

    original = Trainer.step
    steps = {"n": 0}

    def signal_on_fourth_step(self, *args):
        out = original(self, *args)
        steps["n"] += 1
        if steps["n"] == 4:  # 3 batches per epoch: epoch 2, after batch 1
            self._stop_signal = 15
        return out

    monkeypatch.setattr(Trainer, "step", signal_on_fourth_step)
    with pytest.raises(Interrupted):
        run_recipe(resolved, tmp_path / "sig", runs_dir=tmp_path / "runs")
    monkeypatch.setattr(Trainer, "step", original)
    run_recipe(resolved, tmp_path / "sig", runs_dir=tmp_path / "runs")
    state = _final_state(tmp_path / "sig")
    for part in ("student", "method"):
        assert state[part].keys() == ref_state[part].keys()
        for key, value in ref_state[part].items():
            assert torch.equal(state[part][key], value), f"{part}.{key} differs after the resume"


def test_a_second_teacher_of_another_label_space_is_refused_naming_its_key(tmp_path):
    _teachers(tmp_path, classes=5)
    path = write(tmp_path / "student.toml", STUDENT)
    with pytest.raises(RecipeError, match=r"teachers\.natural\.recipe: .*it has 5 classes and the student 10") as exc:
        run_recipe(load_recipe(path), tmp_path / "out", runs_dir=tmp_path / "runs")
    assert "\n" not in str(exc.value)


def test_a_second_teacher_of_another_input_size_is_refused_naming_its_key(tmp_path):
    _teachers(tmp_path, size=16)
    path = write(tmp_path / "student.toml", STUDENT)
    with pytest.raises(RecipeError, match=r"teachers\.natural\.recipe: this teacher takes 16-pixel inputs"):
        run_recipe(load_recipe(path), tmp_path / "out", runs_dir=tmp_path / "runs")


def test_missing_and_unknown_teacher_names_are_recipe_errors(tmp_path):
    _teachers(tmp_path)
    missing = write(tmp_path / "missing.toml", STUDENT.replace('[teachers.natural]\nrecipe = "natural.toml"\n', ""))
    with pytest.raises(RecipeError, match=r"teachers\.natural: method 'mtard' needs a second teacher 'natural'"):
        load_recipe(missing)
    typo = write(tmp_path / "typo.toml", STUDENT.replace("[teachers.natural]", "[teachers.natual]"))
    with pytest.raises(RecipeError, match=r"teachers\.natual: .*no teacher named 'natual'.*did you mean 'natural'"):
        load_recipe(typo)
    other = write(tmp_path / "kd.toml", STUDENT.replace('name = "mtard"', 'name = "kd"'))
    with pytest.raises(RecipeError, match=r"teachers\.natural: .*reads no other teacher"):
        load_recipe(other)


def test_a_second_teacher_follows_normalize_like_the_first(tmp_path):
    """``[teachers.<name>]`` takes ``normalize`` as ``[teacher]`` does: a teacher recipe's own setting must
    not be contradicted, and a model.pt recording another normalisation is refused under its key."""
    from kdbench.build import build_source
    from kdbench.engine.progress import make_progress
    from kdbench.teachers import build_extra_teacher

    _teachers(tmp_path)
    natural = tmp_path / "natural.toml"
    natural.write_text(natural.read_text().replace('model = "resnet8"', 'model = "resnet8"\nnormalize = "none"'))
    contradicts = write(
        tmp_path / "contradicts.toml",
        STUDENT.replace('recipe = "natural.toml"', 'recipe = "natural.toml"\nnormalize = "dataset"'),
    )
    with pytest.raises(RecipeError, match=r"teachers\.natural\.normalize: "):
        load_recipe(contradicts)

    trained = run_recipe(load_recipe(natural), tmp_path / "natural_run").out_dir
    from_file = STUDENT.replace('recipe = "natural.toml"', f'model = "resnet8"\ncheckpoint = "{trained}"')
    resolved = load_recipe(write(tmp_path / "from_file.toml", from_file))
    info = build_source(resolved).info()
    with pytest.raises(RecipeError, match=r"teachers\.natural\.normalize: "):
        build_extra_teacher(resolved, "natural", info, _runs_no_recipe, make_progress().message)
    pinned = from_file.replace(f'checkpoint = "{trained}"', f'checkpoint = "{trained}"\nnormalize = "none"')
    fixed = load_recipe(write(tmp_path / "fixed.toml", pinned))
    net = build_extra_teacher(fixed, "natural", info, _runs_no_recipe, make_progress().message)
    assert net.normalize.mean.flatten().tolist() == [0.0, 0.0, 0.0]
    assert net.normalize.std.flatten().tolist() == [1.0, 1.0, 1.0]


def _runs_no_recipe(sub: ResolvedRecipe) -> Path:
    """The recipe runner handed to a teacher given as a checkpoint: it must never be called."""
    raise AssertionError(f"a teacher from a checkpoint ran the recipe {sub.file}")
