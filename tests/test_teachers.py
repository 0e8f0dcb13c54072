"""Teacher sources and identity, the teacher's own cached numbers, held-out selection and run cost."""

from __future__ import annotations

import json

import pytest
import torch

from kdbench._errors import RecipeError, UserError
from kdbench.build import _hold_out, build_data
from kdbench.engine.hardware import resolve_hardware
from kdbench.engine.progress import make_progress
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe
from kdbench.teacher_eval import TEACHER_EVAL_DIR

from .conftest import write

DATA = 'dataset = "fake"\noptions = {train_size = 96, test_size = 32, image_size = 16}'
TEACHER = f"""
name = "teacher"
[data]
{DATA}
[student]
model = "resnet8"
[method]
name = "natural"
[train]
epochs = 1
batch_size = 32
[eval]
attacks = ["clean", "pgd2"]
"""


def _student(name: str, teacher: str, extra: str = "", data_extra: str = "") -> str:
    return f"""
name = "{name}"
[data]
{DATA}
{data_extra}
[teacher]
{teacher}
[student]
model = "resnet8"
[method]
name = "kd"
[train]
epochs = 1
batch_size = 32
{extra}
[eval]
attacks = ["clean", "pgd2"]
"""


def _quiet():
    return make_progress(quiet=True)


def test_teacher_identity_and_cached_numbers_on_the_students_examples(tmp_path):
    write(tmp_path / "teacher.toml", TEACHER)
    runs = tmp_path / "runs"
    first = load_recipe(write(tmp_path / "a.toml", _student("a", 'recipe = "teacher.toml"')))
    second = load_recipe(write(tmp_path / "b.toml", "seed = 1\n" + _student("b", 'recipe = "teacher.toml"')))
    a = run_recipe(first, runs_dir=runs, progress=_quiet()).result.dump()
    b = run_recipe(second, runs_dir=runs, progress=_quiet()).result.dump()
    teacher_result = json.loads(next((runs / "teacher").glob("*/result.json")).read_text())

    source = a["teacher_source"]
    assert source["source"] == "recipe" and source["recipe_hash"] == teacher_result["recipe_hash"]
    assert source["key"] == f"recipe:{teacher_result['recipe_hash'][:12]}"
    assert source["metrics_cached"] is False and b["teacher_source"]["metrics_cached"] is True
    assert a["teacher_metrics"] == b["teacher_metrics"]
    # measured by kdbench's evaluation on the student's examples: here the teacher run's own test set
    assert a["teacher_metrics"]["n_eval"] == a["metrics"]["n_eval"] == 32
    assert a["teacher_metrics"]["clean_acc"] == pytest.approx(teacher_result["metrics"]["clean_acc"])
    assert len(list((runs / TEACHER_EVAL_DIR).glob("*.json"))) == 1
    assert a["normalize"]["student"]["setting"] == "dataset"
    model = torch.load(next((runs / "a").glob("*/model.pt")), weights_only=True)
    assert model["normalize"]["setting"] == "dataset"
    cost = a["cost"]
    assert cost["device_type"] == "cpu" and cost["devices"] == 1 and cost["peak_memory_bytes"] > 0
    assert cost["train_device_seconds"] > 0 and cost["eval_device_seconds"] > 0 and cost["device"]


def test_checkpoint_teacher_with_another_normalisation_is_refused(tmp_path):
    write(tmp_path / "teacher.toml", TEACHER)
    runs = tmp_path / "runs"
    run_recipe(load_recipe(tmp_path / "teacher.toml"), runs_dir=runs, progress=_quiet())
    weights = next((runs / "teacher").glob("*/model.pt"))
    teacher = f'model = "resnet8"\ncheckpoint = "{weights}"\nnormalize = "none"'
    resolved = load_recipe(write(tmp_path / "s.toml", _student("s", teacher)))
    with pytest.raises(RecipeError) as err:
        run_recipe(resolved, runs_dir=runs, progress=_quiet())
    assert "teacher.normalize" in str(err.value) and "trained with normalize" in str(err.value)

    # the same file with the recipe agreeing: its identity is the file's SHA-256
    ok = load_recipe(write(tmp_path / "s2.toml", _student("s2", f'model = "resnet8"\ncheckpoint = "{weights}"')))
    result = run_recipe(ok, runs_dir=runs, progress=_quiet()).result.dump()
    import hashlib

    assert result["teacher_source"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert result["teacher_source"]["key"].startswith("sha256:")


def test_teacher_recipe_with_contradicting_normalize_is_refused(tmp_path):
    write(tmp_path / "teacher.toml", TEACHER)
    with pytest.raises(RecipeError, match=r"teacher\.normalize"):
        load_recipe(write(tmp_path / "s.toml", _student("s", 'recipe = "teacher.toml"\nnormalize = "none"')))


def test_checkpoint_with_another_class_count_is_a_one_line_error(tmp_path):
    from kdbench._registry import MODELS
    from kdbench.build import build_network, network_spec
    from kdbench.data.base import DatasetInfo

    net = build_network(
        "resnet8", MODELS.get("resnet8").Config(), network_spec(DatasetInfo(100, 16, (0.5,) * 3, (0.5,) * 3))
    )
    path = tmp_path / "bare.pt"
    torch.save(net.state_dict(), path)  # a bare state_dict: no recorded class count
    resolved = load_recipe(write(tmp_path / "s.toml", _student("s", f'model = "resnet8"\ncheckpoint = "{path}"')))
    with pytest.raises(UserError) as err:
        run_recipe(resolved, runs_dir=tmp_path / "runs", progress=_quiet())
    text = str(err.value)
    assert "has 100 outputs but the recipe's dataset has 10 classes" in text and "\n" not in text


def test_val_size_holds_out_stratified_seeded_images(tmp_path):
    path = write(
        tmp_path / "t.toml",
        TEACHER.replace("[train]", "[train]\nval_every = 1").replace(
            "image_size = 16}", "image_size = 16}\nval_size = 20"
        ),
    )
    resolved = load_recipe(path)
    hw = resolve_hardware("cpu", "fp32", None, False)
    data = build_data(resolved, hw)
    assert data.val_indices is not None and len(data.val_indices) == 20
    assert data.train_size == 96 - 20
    train_idx, val_idx = _hold_out(data.val_labels.new_zeros(96) + torch.arange(96) % 10, None, 20, 0, resolved)
    assert train_idx is not None and val_idx is not None
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 96 and not set(train_idx.tolist()) & set(
        val_idx.tolist()
    )
    counts = torch.bincount(data.val_labels, minlength=10)
    assert int(counts.max() - counts.min()) <= 1  # stratified
    again = build_data(resolved, hw)
    assert torch.equal(again.val_indices, data.val_indices)  # seeded
    other = build_data(load_recipe(path, ["seed=3"]), hw)
    assert not torch.equal(other.val_indices, data.val_indices)

    with pytest.raises(RecipeError, match=r"data\.val_size: holds out 96 images but the training split has 96"):
        build_data(load_recipe(path, ["data.val_size=96"]), hw)


def test_best_on_validation_model_is_evaluated_on_the_test_set(tmp_path):
    path = write(
        tmp_path / "t.toml",
        TEACHER.replace("epochs = 1", 'epochs = 3\nval_attack = "pgd2"').replace(
            "image_size = 16}", "image_size = 16}\nval_size = 32"
        ),
    )
    out = tmp_path / "out"
    result = run_recipe(load_recipe(path), out, progress=_quiet()).result.dump()
    val = result["validation"]
    assert val["size"] == 32 and val["attack"] == "pgd2" and val["ranked"] == "final"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scores = [row["val/score"] for row in history]
    assert len(scores) == 3
    assert val["best_epoch"] == 1 + scores.index(max(scores))
    if val["best_is_final"]:
        assert result["metrics_best_val"] is None
    else:
        assert result["metrics_best_val"]["n_eval"] == result["metrics"]["n_eval"]
        assert (out / "model_best_val.pt").is_file()
    assert result["cost"]["validation_device_seconds"] > 0
