"""A method whose loss breaks the contract is stopped at the first step, in one line, before any update.

The contract (`kdbench.Method.loss`): a non-empty dict of named scalar floating-point tensors with
autograd history. Each fault below is a mistake a plugin author makes; each used to crash with a
traceback deep in the engine (or, for a detached term, to train on nothing silently).
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

from ..conftest import write
from .conftest import TINY_RECIPE


class BadLossConfig(StrictModel):
    fault: Literal["vector", "mixed_shapes", "no_grad", "python_float", "empty", "integer"] = "vector"


class BadLoss(Method):
    Config = BadLossConfig
    needs_teacher: ClassVar[bool] = False
    uses_teacher_logits: ClassVar[bool] = False

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        fault = self.config.fault  # type: ignore[attr-defined]
        logits = ctx.student_clean.logits.float()
        per_sample = F.cross_entropy(logits, ctx.y, reduction="none")
        if fault == "vector":
            return {"ce": per_sample}  # forgot .mean()
        if fault == "mixed_shapes":
            return {"ce": per_sample.mean(), "reg": logits.pow(2).mean(0)}
        if fault == "no_grad":
            with torch.no_grad():
                return {"ce": per_sample.mean(), "kd": F.mse_loss(logits, logits.roll(1, 0))}
        if fault == "python_float":
            return {"ce": per_sample.mean(), "bonus": 0.1}  # type: ignore[dict-item]
        if fault == "integer":
            return {"ce": per_sample.mean(), "count": (logits.argmax(1) == ctx.y).sum()}
        return {}


EXPECTED = {
    "vector": "loss term 'ce' has shape (32,), not a scalar",
    "mixed_shapes": "loss term 'reg' has shape (10,), not a scalar",
    "no_grad": "loss term 'ce' has no gradient (computed under torch.no_grad() or detached)",
    "python_float": "loss term 'bonus' is a float, not a tensor",
    "integer": "loss term 'count' has dtype torch.int64, not a floating-point type",
    "empty": "loss() returned an empty dict, not named loss terms",
}


@pytest.fixture
def bad_loss() -> Iterator[None]:
    METHODS.register("bad_loss", BadLoss, distribution="fault-tests")
    yield
    METHODS.unregister("bad_loss")


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_broken_loss_is_one_line_naming_method_and_term_before_any_step(bad_loss, tmp_path, capsys, fault):
    text = TINY_RECIPE.replace('name = "natural"', f'name = "bad_loss"\nfault = "{fault}"')
    recipe = write(tmp_path / "bad.toml", text)
    out = tmp_path / "out"

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kdbench: error: method bad_loss: {EXPECTED[fault]}; ")
    assert not list(out.glob("checkpoints/*.pt"))  # stopped before the first optimiser step
    assert not (out / "model.pt").exists()
