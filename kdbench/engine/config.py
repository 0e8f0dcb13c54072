"""The engine's own configuration: the ``[train]`` table of a recipe (optimisation, precision, checkpointing).

It lives with the engine that reads it (`kdbench.engine.trainer`), so the engine does not depend on the
recipe package; `kdbench.recipe` embeds it as its ``train`` section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdbench.config import StrictModel, introduced

__all__ = ["TrainSection"]


class TrainSection(StrictModel):
    """Optimisation, precision and checkpointing."""

    epochs: int = Field(1, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.1, gt=0, description="peak learning rate (SGD)")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["multistep", "cosine", "onecycle", "constant"] = "multistep"
    milestones: list[float] = Field(
        default_factory=lambda: [0.5, 0.75],
        description="multistep: epochs at which lr is multiplied by gamma (values < 1 are fractions of epochs)",
    )
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: float = Field(
        0.0, ge=0, description="linear warm-up from 0 to lr over this many epochs (onecycle: the length of its ramp)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    channels_last: bool | None = Field(None, description="None: on for CUDA, off for CPU")
    compile: bool = Field(False, description="torch.compile the student and teacher")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode; reduce-overhead captures CUDA graphs of the fixed-shape passes"
    )
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise-reproducible on CPU)")
    log_every: int = Field(50, gt=0, description="steps between progress updates that read values from the device")
    val_every: int = introduced(
        1, since="0.2", gt=0, description="with data.val_size: epochs between robust checks on the held-out images"
    )
    val_attack: str = introduced(
        "pgd10", since="0.2", pattern=r"^(clean|fgsm|pgd[1-9][0-9]*)$", description="the held-out check's attack"
    )

    @model_validator(mode="after")
    def _check_milestones(self) -> TrainSection:
        if any(m <= 0 for m in self.milestones):
            raise ValueError("train.milestones must be positive")
        return self
