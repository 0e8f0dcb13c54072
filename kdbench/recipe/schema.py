"""The recipe schema: the core tables of a recipe TOML, validated strictly (unknown keys, NaN and infinity
rejected) before any component is looked up. A component's own options are validated against its
``Config`` in `kdbench.recipe.resolve`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kdbench.attacks.schedule import EpsPoint, EpsSchedule
from kdbench.config import Number, StrictModel, introduced
from kdbench.engine.config import TrainSection
from kdbench.models.normalization import NormalizeSetting

if TYPE_CHECKING:
    pass


#: Recipe names become folder names: letters, digits and ._+- only.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


# ---------------------------------------------------------------------------------------------- schema


class DataSection(StrictModel):
    """Where the images come from and which of them are used."""

    dataset: str = Field(description="registered dataset name: cifar10, cifar100, stl10, imagefolder, fake, ...")
    root: str | None = Field(None, description="the dataset's folder; default $KDBENCH_DATA_ROOT/<dataset>")
    download: bool = Field(False, description="allow downloading the dataset into root when it is missing")
    train_subset: int | None = Field(None, gt=0, description="train on a class-balanced subset of this size")
    test_subset: int | None = Field(
        None, gt=0, description="old spelling of eval.n_examples (the evaluation set's size); give only one"
    )
    val_size: int | None = introduced(
        None,
        since="0.2",
        gt=0,
        description="hold out this many training images (stratified, seeded) for checkpoint selection",
    )
    augment: bool = Field(True, description="random crop (4-pixel zero padding) and horizontal flip")
    options: dict[str, Any] = Field(default_factory=dict, description="the dataset's own options")


class StudentSection(StrictModel):
    """The network being trained."""

    model: str = Field(description="registered model name, e.g. resnet18, mobilenet_v2, timm:<name>")
    normalize: NormalizeSetting | None = introduced(
        None,
        since="0.2",
        description='input normalisation: "dataset" (default), "none" (raw [0, 1] pixels) or {mean, std}',
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the model's own options")


#: ``teacher.model = "robustbench:<name>"`` takes the teacher from the RobustBench model zoo.
ZOO_PREFIX = "robustbench:"


class TeacherSection(StrictModel):
    """The frozen network distilled from: a checkpoint, the result of another recipe, or a zoo model."""

    model: str | None = Field(
        None, description="registered model name or robustbench:<zoo name> (default: the teacher recipe's student)"
    )
    checkpoint: str | None = Field(None, description="weights file or run directory (relative to the recipe)")
    recipe: str | None = Field(None, description="recipe that trains the teacher; run first unless already done")
    normalize: NormalizeSetting | None = introduced(
        None,
        since="0.2",
        description='input normalisation: "dataset", "none" (official ARD/RSLAD/TRADES checkpoints) or {mean, std}; '
        'default: the teacher recipe\'s, else "dataset" (zoo models normalise inside themselves)',
    )
    model_dir: str | None = introduced(
        None,
        since="0.2",
        description="folder of RobustBench weights (<dir>/<dataset>/<threat>/<name>.pt); default $KDBENCH_MODEL_DIR",
    )
    download: bool = introduced(
        False, since="0.2", description="allow downloading missing RobustBench weights into model_dir"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the model's own options")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description='keys of the teacher recipe to override, e.g. {"train.epochs" = 2} '
        "(--set teacher.set.train.epochs=2, or --teacher-set train.epochs=2)",
    )

    @property
    def zoo_name(self) -> str | None:
        """The RobustBench model name of a zoo teacher, else None."""
        if self.model is not None and self.model.startswith(ZOO_PREFIX):
            return self.model[len(ZOO_PREFIX) :]
        return None

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if self.zoo_name is not None:
            if self.checkpoint is not None or self.recipe is not None:
                raise ValueError("a robustbench: teacher brings its own weights; remove teacher.checkpoint/recipe")
            if not self.zoo_name:
                raise ValueError(
                    'write teacher.model = "robustbench:<model name>", e.g. "robustbench:Zhang2019Theoretically"'
                )
            if self.normalize not in (None, "none"):
                raise ValueError(
                    "RobustBench zoo models take [0, 1] inputs and normalise inside themselves; "
                    "remove teacher.normalize"
                )
            if self.options:
                raise ValueError("a robustbench: teacher takes no options")
            return self
        if self.model_dir is not None or self.download:
            raise ValueError("teacher.model_dir and teacher.download are for robustbench: teachers only")
        if (self.checkpoint is None) == (self.recipe is None):
            raise ValueError(
                "give exactly one of teacher.checkpoint or teacher.recipe (or a robustbench: teacher.model, alone)"
            )
        if self.set and self.recipe is None:
            raise ValueError("teacher.set overrides keys of a teacher recipe; it needs teacher.recipe")
        if self.checkpoint is not None and self.model is None:
            raise ValueError("teacher.model is required with teacher.checkpoint")
        return self


class _OpenSection(BaseModel):
    """A table whose other keys belong to the named component (validated in phase 2)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MethodSection(_OpenSection):
    name: str = Field(description="registered method name: natural, kd, ...")


class AttackSection(_OpenSection):
    name: str = Field("pgd", description="registered attack used during training (when the method attacks)")
    eps_schedule: list[EpsPoint] = introduced(
        [],
        since="0.2",
        description='per-epoch budget of the training attack: [{epoch = 0, eps = "2/255"}, ...] (0-based epochs)',
    )
    eps_schedule_interpolation: Literal["step", "linear"] = introduced(
        "step", since="0.2", description="between schedule points: hold each point's budget (step) or interpolate"
    )

    def options(self) -> dict[str, Any]:
        """The attack's own options (the schedule keys belong to the engine)."""
        return dict(self.model_extra or {})

    def schedule(self) -> EpsSchedule:
        return EpsSchedule(points=list(self.eps_schedule), interpolation=self.eps_schedule_interpolation)


#: Keys of [attack] that the engine reads (the schedule), not the attack's own options.
_ATTACK_ENGINE_KEYS = ("eps_schedule", "eps_schedule_interpolation")


class EvalSection(StrictModel):
    """The evaluation after training."""

    attacks: list[str] = Field(default_factory=lambda: ["clean", "fgsm", "pgd20", "cw", "autoattack"])
    n_examples: int | None = Field(
        None, gt=0, description="evaluate on N images of the dataset's fixed selection (None: all; docs/recipes.md)"
    )
    # Hash-neutral at None: the evaluation rules are code (like the attacks), and a finished run stays
    # found after an upgrade; `kdbench eval RUN --update-result` re-evaluates it under today's rules.
    examples: list[int] | str | None = introduced(
        None,
        since="0.2",
        description="explicit test indices, or a file of them (relative to the recipe); None: the fixed rule",
    )
    batch_size: int = Field(256, gt=0)
    norm: Literal["linf", "l2"] = "linf"
    eps: Number = Field(8 / 255, ge=0, description='evaluation budget, e.g. "8/255"')
    teacher: bool = introduced(
        True,
        since="0.2",
        description="also evaluate the teacher on the same examples (cached per teacher in <runs>/.teacher-evals)",
    )
    step_size: Number | None = introduced(
        None, since="0.2", gt=0, description="PGD/CW step; None: max(eps/4, 2.5*eps/steps) (2/255 for PGD-20 at 8/255)"
    )
    chunk_size: int = introduced(
        0,
        since="0.2",
        ge=0,
        description="examples per chunk, each seeded on its own: the unit shared by torchrun processes and resumed "
        "after a kill; 0: one chunk (one process), ceil(N / processes) under torchrun (docs/distributed.md)",
    )

    @field_validator("eps")
    @classmethod
    def _eps_fits_the_norm(cls, eps: float, info: ValidationInfo) -> float:
        if info.data.get("norm", "linf") == "linf" and eps > 1:
            raise ValueError(f"an L-inf eps above 1 is meaningless for images in [0, 1] (got {eps}); write e.g. 8/255")
        return eps

    @model_validator(mode="after")
    def _check_attacks_fit_the_norm(self) -> EvalSection:
        if self.norm == "l2" and "fgsm" in self.attacks:
            raise ValueError("fgsm is an L-inf attack; with norm 'l2' evaluate pgd<k> instead")
        return self


class Recipe(StrictModel):
    """A complete experiment. See docs/recipes.md for every key."""

    # 200: a run folder is named after the recipe; file systems allow 255 bytes per name.
    name: str = Field(pattern=NAME_PATTERN, max_length=200)
    description: str = ""
    # torch.manual_seed takes 64-bit seeds; derived seeds (per epoch, per process) stay below 2**63.
    seed: int = Field(0, ge=0, le=2**63 - 1)
    data: DataSection
    teacher: TeacherSection | None = None
    teachers: dict[str, TeacherSection] = introduced(
        {},
        since="0.2",
        description="additional named teachers a method reads (e.g. [teachers.natural] for mtard); keys as [teacher]",
    )
    student: StudentSection
    method: MethodSection
    attack: AttackSection = Field(default_factory=lambda: AttackSection.model_validate({}))
    train: TrainSection = Field(default_factory=lambda: TrainSection.model_validate({}))
    eval: EvalSection = Field(default_factory=lambda: EvalSection.model_validate({}))
