"""Recipes: two-phase validation, overrides, stable hashes, and one-line errors with key paths."""

from __future__ import annotations

import tomllib

import pytest

from kdbench import RecipeError
from kdbench._toml import dumps
from kdbench.recipe import load_recipe, resolve
from kdbench.testing import tiny_recipe

from .conftest import write

BASE = tiny_recipe("r", seed=1, batch_size=16)


def base(tmp_path, extra: str = "", name: str = "r.toml"):
    return write(tmp_path / name, BASE + extra)


def test_resolves_with_all_defaults(tmp_path):
    resolved = load_recipe(base(tmp_path))
    d = resolved.to_dict()
    assert d["train"]["lr"] == 0.1
    assert d["train"]["schedule"] == "multistep"
    assert d["data"]["options"] == {"num_classes": 10, "image_size": 16, "train_size": 64, "test_size": 32, "seed": 0}
    assert d["method"] == {"name": "natural"}
    assert d["attack"]["name"] == "pgd"
    assert len(resolved.hash) == 64


def test_hash_is_stable_and_ignores_order_and_description(tmp_path):
    a = load_recipe(base(tmp_path))
    reordered = write(tmp_path / "b.toml", 'description = "notes"\n' + BASE.replace("seed = 1\n", "") + "")
    b = load_recipe(reordered, ["seed=1"])
    assert a.hash == b.hash
    c = load_recipe(base(tmp_path), ["train.lr=0.05"])
    assert c.hash != a.hash


def test_resolved_recipe_round_trips_through_toml(tmp_path):
    a = load_recipe(base(tmp_path))
    text = dumps(a.to_dict())
    again = resolve(tomllib.loads(text))
    assert again.hash == a.hash


def test_overrides_are_typed_by_the_schema(tmp_path):
    r = load_recipe(base(tmp_path), ["train.epochs=3", "train.lr=1e-2", 'eval.attacks=["clean"]', "name=other"])
    assert r.recipe.train.epochs == 3
    assert r.recipe.train.lr == 0.01
    assert r.recipe.name == "other"
    r = load_recipe(base(tmp_path), ["train.device=cpu"])  # bare strings need no quotes
    assert r.recipe.train.device == "cpu"


def test_method_options_are_validated_by_the_method(tmp_path):
    extra = '\n[teacher]\nmodel = "resnet8"\ncheckpoint = "t.pt"\n'
    path = write(tmp_path / "kd.toml", BASE.replace('name = "natural"', 'name = "kd"\ntemperature = 2.0') + extra)
    r = load_recipe(path)
    assert r.method_config.temperature == 2.0
    assert r.method_config.alpha == 0.9


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        (["train.epoch=3"], "train.epoch", "unknown key; did you mean 'epochs'"),
        (["train.epochs=three"], "train.epochs", "integer"),
        (["train.lr=nan"], "train.lr", "finite"),
        (["train.lr=-1"], "train.lr", "greater than 0"),
        (["method.name=kdd"], "method.name", "did you mean 'kd'"),
        (["method.temprature=3"], "method.temprature", "unknown key"),
        (["student.model=resnet81"], "student.model", "did you mean"),
        (["data.dataset=cifar11"], "data.dataset", "did you mean 'cifar10'"),
        (["data.options.image_sise=8"], "data.options.image_sise", "did you mean 'image_size'"),
        (['eval.attacks=["pgd21x"]'], "eval.attacks", "pgd21x"),
        (["method.name=kd"], "teacher", "no [teacher] table"),
        (["name=bad name"], "name", "pattern"),
        (["train.device=tpu"], "train.device", "auto"),
    ],
)
def test_errors_name_file_key_and_fix(tmp_path, overrides, key, fragment):
    path = base(tmp_path)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}:"), message
    assert fragment in message
    assert "\n" not in message


def test_file_errors(tmp_path):
    with pytest.raises(RecipeError, match=r"missing\.toml: file not found"):
        load_recipe(tmp_path / "missing.toml")
    bad = write(tmp_path / "bad.toml", "name = \n")
    with pytest.raises(RecipeError, match=r"bad.toml: invalid TOML: .*line 1"):
        load_recipe(bad)


def test_teacher_recipe_is_resolved_relative_and_hashed(tmp_path):
    base(tmp_path, name="teacher.toml")
    student = write(
        tmp_path / "sub" / "student.toml",
        BASE.replace('name = "natural"', 'name = "kd"') + '\n[teacher]\nrecipe = "../teacher.toml"\n',
    )
    r = load_recipe(student)
    assert r.teacher_recipe is not None
    assert r.to_dict()["teacher"]["model"] == "resnet8"
    h = r.hash
    base(tmp_path, extra="", name="teacher.toml").write_text(BASE.replace("seed = 1", "seed = 2"))
    assert load_recipe(student).hash != h  # a different teacher is a different run


def test_teacher_recipe_cycle_is_an_error(tmp_path):
    text = BASE.replace('name = "natural"', 'name = "kd"')
    write(tmp_path / "a.toml", text + '\n[teacher]\nrecipe = "b.toml"\n')
    write(tmp_path / "b.toml", text + '\n[teacher]\nrecipe = "a.toml"\n')
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.toml")


def test_teacher_for_teacherless_method_is_an_error(tmp_path):
    path = base(tmp_path, '\n[teacher]\nmodel = "resnet8"\ncheckpoint = "x.pt"\n')
    with pytest.raises(RecipeError, match="teacher: method 'natural' trains without a teacher"):
        load_recipe(path)


def test_fraction_strings_are_numbers(tmp_path):
    r = load_recipe(base(tmp_path), ['eval.eps="8/255"'])
    assert r.recipe.eval.eps == pytest.approx(8 / 255)


def test_component_classes_are_looked_up_once_at_resolution(tmp_path, monkeypatch):
    """The resolved recipe keeps the method, attack and dataset classes: building a run asks no registry again."""
    import torch

    from kdbench import ATTACKS, DATASETS, METHODS, Registry
    from kdbench.build import build_attack, build_method, build_source, check_label_spaces
    from kdbench.engine.estimate import attack_passes
    from kdbench.method import MethodSetup

    resolved = load_recipe(base(tmp_path))
    assert resolved.method_class is METHODS.get("natural")
    assert resolved.attack_class is ATTACKS.get("pgd")
    assert resolved.data_class is DATASETS.get("fake")

    def no_lookup(self, name):
        raise AssertionError(f"{self.kind} registry asked for {name!r} after resolution")

    monkeypatch.setattr(Registry, "get", no_lookup)
    setup = MethodSetup(
        num_classes=10,
        student_feature_dim=8,
        teacher_feature_dim=None,
        teacher_num_classes=None,
        dataset_size=64,
        device=torch.device("cpu"),
    )
    assert type(build_method(resolved, setup)) is resolved.method_class
    assert type(build_attack(resolved)) is resolved.attack_class
    assert type(build_source(resolved)) is resolved.data_class
    check_label_spaces(resolved, 10, 10)
    assert attack_passes(resolved) == 0  # natural training runs no attack
