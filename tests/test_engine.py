"""The engine end to end on fake data: outputs, reuse, resume after a crash or a signal, NaN stops."""

from __future__ import annotations

import json

import pytest
import torch

from kdbench.engine.loss_checks import NonFiniteLossError
from kdbench.engine.trainer import Interrupted, Trainer
from kdbench.recipe import load_recipe
from kdbench.run import default_out_dir, run_recipe
from kdbench.testing import tiny_recipe

from .conftest import write

TEACHER = tiny_recipe("teacher", train_size=96, epochs=2, train_extra="deterministic = true")

STUDENT = tiny_recipe(
    "student",
    seed=3,
    method="kd",
    train_size=96,
    teacher='[teacher]\nrecipe = "teacher.toml"',
    epochs=3,
    train_extra='schedule = "cosine"\ndeterministic = true',
)


@pytest.fixture
def recipes(tmp_path):
    write(tmp_path / "teacher.toml", TEACHER)
    return write(tmp_path / "student.toml", STUDENT)


def _weights(out):
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def test_run_writes_outputs_and_reuses_finished_runs(recipes, tmp_path):
    resolved = load_recipe(recipes)
    outcome = run_recipe(resolved, tmp_path / "out")
    out = outcome.out_dir
    result = json.loads((out / "result.json").read_text())
    assert result["schema_version"] == 1
    assert result["recipe_hash"] == resolved.hash
    assert result["method"] == "kd"
    assert result["teacher"] == "resnet8"
    assert result["student"] == "resnet8"
    assert 0.0 <= result["metrics"]["clean_acc"] <= 1.0
    assert result["metrics"]["n_eval"] == 32
    assert result["train"]["epochs"] == 3
    assert result["train"]["images_per_second"] > 0
    assert result["env"]["torch"] == torch.__version__
    assert result["env"]["plugins"]["kdbench"]
    assert result["seed"] == 3
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert "loss/kd" in json.loads(lines[0])
    assert "loss/ce" in json.loads(lines[0])
    recipe_text = (out / "recipe.toml").read_text()
    assert resolved.hash in recipe_text.splitlines()[0]
    # the teacher ran first, into its default folder
    assert (default_out_dir(resolved.teacher_recipe) / "result.json").is_file()
    again = run_recipe(resolved, tmp_path / "out")
    assert again.reused
    assert again.result is not None and again.result.dump() == result


def test_resume_after_crash_is_bitwise_identical(recipes, tmp_path, monkeypatch):
    resolved = load_recipe(recipes)
    reference = run_recipe(resolved, tmp_path / "ref").out_dir

    original = Trainer._run_epoch
    calls = {"n": 0}

    def crash_in_third_epoch(self, epoch, start_batch):
        calls["n"] += 1
        if epoch == 2:
            raise RuntimeError("simulated crash")
        return original(self, epoch, start_batch)

    monkeypatch.setattr(Trainer, "_run_epoch", crash_in_third_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(resolved, tmp_path / "crashed")
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    assert not (tmp_path / "crashed" / "result.json").exists()
    run_recipe(resolved, tmp_path / "crashed")
    first, second = _weights(reference), _weights(tmp_path / "crashed")
    assert all(torch.equal(first[k], second[k]) for k in first)
    ref_metrics = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    new_metrics = [json.loads(x) for x in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in ref_metrics] == [
        {k: v for k, v in r.items() if k not in drop} for r in new_metrics
    ]


def test_signal_mid_epoch_checkpoints_and_resumes_exactly(recipes, tmp_path, monkeypatch):
    resolved = load_recipe(recipes)
    reference = run_recipe(resolved, tmp_path / "ref").out_dir

    original = Trainer.step
    state = {"steps": 0}

    def signal_on_fourth_step(self, *args):
        out = original(self, *args)
        state["steps"] += 1
        if state["steps"] == 4:
            self._stop_signal = 15  # as the SIGTERM handler would
        return out

    monkeypatch.setattr(Trainer, "step", signal_on_fourth_step)
    with pytest.raises(Interrupted):
        run_recipe(resolved, tmp_path / "sig")
    monkeypatch.setattr(Trainer, "step", original)
    names = sorted(p.name for p in (tmp_path / "sig" / "checkpoints").glob("*.pt"))
    assert names[-1] == "ckpt-e0001-b000001.pt"  # 3 batches per epoch: the 4th step is epoch 2, batch 1
    run_recipe(resolved, tmp_path / "sig")
    first, second = _weights(reference), _weights(tmp_path / "sig")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_non_finite_loss_stops_without_checkpoint(recipes, tmp_path, monkeypatch):
    resolved = load_recipe(recipes)
    from kdbench_plugins.kd import KD

    original = KD.loss

    def poisoned(self, ctx):
        terms = original(self, ctx)
        if ctx.epoch == 1 and ctx.step == 2:
            terms["kd"] = terms["kd"] * float("nan")
        return terms

    monkeypatch.setattr(KD, "loss", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        run_recipe(resolved, tmp_path / "nan")
    message = str(info.value)
    assert "kd" in message
    assert "epoch 2, step 2" in message
    assert "ckpt-e0001-b000000.pt" in message
    names = sorted(p.name for p in (tmp_path / "nan" / "checkpoints").glob("*.pt"))
    assert names == ["ckpt-e0001-b000000.pt"]


def test_out_dir_of_another_recipe_is_refused(recipes, tmp_path):
    resolved = load_recipe(recipes)
    run_recipe(resolved, tmp_path / "out")
    other = load_recipe(recipes, ["train.lr=0.05"])
    from kdbench import UserError

    with pytest.raises(UserError, match="holds a run of another recipe"):
        run_recipe(other, tmp_path / "out")


def test_logit_methods_refuse_other_label_spaces(tmp_path):
    write(tmp_path / "teacher.toml", TEACHER.replace("image_size = 16}", "image_size = 16, num_classes = 5}"))
    path = write(tmp_path / "student.toml", STUDENT)
    from kdbench import RecipeError

    with pytest.raises(RecipeError, match="teacher has 5 classes and the student 10"):
        run_recipe(load_recipe(path), tmp_path / "out")
