"""A loss term that turns NaN: the run stops, names the term, the method, the epoch and the step and the
last good checkpoint, and writes nothing after the fault.

The fault comes from a small third-party method registered from Python (`Registry.register`), the
way a plugin author would try one out; the core is not patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from kdbench import METHODS, Method, StepContext, StrictModel
from kdbench.cli import main

from ..conftest import write
from .conftest import TINY_RECIPE


class PoisonConfig(StrictModel):
    nan_epoch: int = Field(2, ge=1, description="epoch (counted from 1) whose step nan_step returns NaN")
    nan_step: int = Field(1, ge=0, description="step within that epoch (counted from 0)")


class Poison(Method):
    """Cross-entropy plus a ``poison`` term: 0, except NaN at one chosen step.

    loss = CE(S(x), y) + poison,   poison = NaN at (nan_epoch, nan_step), else 0
    """

    Config = PoisonConfig
    needs_teacher: ClassVar[bool] = False
    uses_teacher_logits: ClassVar[bool] = False

    def loss(self, ctx: StepContext) -> dict[str, Tensor]:
        cfg: PoisonConfig = self.config  # type: ignore[assignment]
        ce = F.cross_entropy(ctx.student_clean.logits.float(), ctx.y)
        hit = ctx.epoch + 1 == cfg.nan_epoch and ctx.step == cfg.nan_step
        # ce * NaN: the gradients turn NaN too, as in a real blow-up, so later steps' terms go NaN as well
        return {"ce": ce, "poison": ce * (float("nan") if hit else 0.0)}


@pytest.fixture
def poison() -> Iterator[type[Poison]]:
    METHODS.register("poison", Poison, distribution="fault-tests")
    yield Poison
    METHODS.unregister("poison")


@pytest.mark.parametrize(
    ("nan_epoch", "nan_step", "log_every"),
    [(2, 1, 50), (2, 1, 1), (3, 2, 2), (1, 0, 50)],
    ids=["mid-run-sync-at-epoch-end", "mid-run-sync-every-step", "last-step", "first-step"],
)
def test_nan_term_stops_the_run_and_names_where(poison, tmp_path, capsys, nan_epoch, nan_step, log_every):
    text = TINY_RECIPE.replace('name = "natural"', f'name = "poison"\nnan_epoch = {nan_epoch}\nnan_step = {nan_step}')
    recipe = write(tmp_path / "poison.toml", text.replace("deterministic = true", f"log_every = {log_every}"))
    out = tmp_path / "out"
    folder = out / "checkpoints"
    good = nan_epoch - 1  # epochs finished (and checkpointed) before the fault

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    newest = folder / f"ckpt-e{good:04d}-b000000.pt"
    last = f"last good checkpoint: {newest}" if good else "no checkpoint was written yet"
    assert err.strip() == (
        f"kdbench: error: non-finite loss term poison of method poison at epoch {nan_epoch}, step {nan_step}; "
        f"stopped without saving; {last}"
    )
    checkpoints = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    assert checkpoints == [f"ckpt-e{e:04d}-b000000.pt" for e in range(max(1, good - 1), good + 1) if good]
    lines = (out / "metrics.jsonl").read_text().splitlines() if good else []
    assert len(lines) == good
    assert not (out / "model.pt").exists()
    assert not (out / "result.json").exists()
