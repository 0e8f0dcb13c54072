"""A method plugin that changes the teacher is stopped before its damage reaches a checkpoint.

Two realistic ways a third-party method breaks the frozen teacher: an in-place update of a teacher
weight ("sharpening" it), and a forward pass in train mode, which moves the teacher's BatchNorm
running statistics. Either used to go unnoticed, and a resume then rebuilt the teacher from its
file, so the resumed run differed from the uninterrupted one. The run now stops at the first
checkpoint after the change, naming the method and the changed tensors, and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench import METHODS, Method, StepContext, StrictModel
from kdbench.cli import main
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from ..conftest import write
from .conftest import TINY_RECIPE


class MeddlerConfig(StrictModel):
    how: Literal["none", "in_place", "train_mode"] = "none"
    at_epoch: int = 2  # counted from 1


class Meddler(Method):
    """KD-style loss that, from ``at_epoch`` on, changes the teacher in the chosen way."""

    Config = MeddlerConfig
    uses_teacher_logits: ClassVar[bool] = True

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        cfg: MeddlerConfig = self.config  # type: ignore[assignment]
        assert ctx.teacher is not None
        if ctx.epoch + 1 >= cfg.at_epoch and cfg.how == "in_place":
            with torch.no_grad():
                next(ctx.teacher.parameters()).mul_(1.01)
        if ctx.epoch + 1 >= cfg.at_epoch and cfg.how == "train_mode":
            ctx.teacher.train()
        teacher = ctx.teacher_clean.logits.float()
        student = ctx.student_clean.logits.float()
        kd = F.kl_div(F.log_softmax(student, 1), F.softmax(teacher, 1), reduction="batchmean")
        return {"ce": F.cross_entropy(student, ctx.y), "kd": kd}


@pytest.fixture
def meddler() -> Iterator[None]:
    METHODS.register("meddler", Meddler, distribution="fault-tests")
    yield
    METHODS.unregister("meddler")


def _recipes(tmp_path, how):  # type: ignore[no-untyped-def]
    write(tmp_path / "teacher.toml", TINY_RECIPE)
    text = TINY_RECIPE.replace('name = "tiny"', 'name = "meddle"').replace(
        'name = "natural"', f'name = "meddler"\nhow = "{how}"'
    )
    return write(tmp_path / "meddle.toml", text + '\n[teacher]\nrecipe = "teacher.toml"\n')


@pytest.mark.parametrize("how", ["in_place", "train_mode"])
def test_method_that_changes_the_teacher_is_stopped_naming_it(meddler, tmp_path, capsys, how):
    recipe = _recipes(tmp_path, how)
    out = tmp_path / "out"

    assert main(["run", str(recipe), "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kdbench: error: method meddler modified the teacher's weights (")
    assert "changed by the end of epoch 2); a method must never change the teacher" in err
    assert err.endswith(
        f"stopped without saving; last good checkpoint: {out / 'checkpoints' / 'ckpt-e0001-b000000.pt'}"
    )
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["ckpt-e0001-b000000.pt"]
    assert not (out / "model.pt").exists()


def test_method_that_leaves_the_teacher_alone_runs_to_the_end(meddler, tmp_path):
    recipe = _recipes(tmp_path, "none")
    outcome = run_recipe(load_recipe(recipe), tmp_path / "out", runs_dir=tmp_path / "runs")
    assert (outcome.out_dir / "model.pt").is_file()
