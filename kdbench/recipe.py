"""Recipes: TOML experiment descriptions, validated in two phases and resolved to a stable hash.

Phase 1 validates the core schema below (unknown keys and NaN/inf rejected). Phase 2 looks the named
components up in the registries and validates their own tables against each component's ``Config``:
``[method]`` (besides ``name``), ``[attack]`` (besides ``name``, on top of the method's
``attack_defaults``), ``student.options``, ``teacher.options`` and ``data.options``. The result is a
`ResolvedRecipe`: the fully defaulted recipe, its component configs, and a hash of both.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kdbench import _toml
from kdbench._errors import RecipeError, UserError, did_you_mean
from kdbench._registry import ATTACKS, DATASETS, METHODS, MODELS, Registry
from kdbench.attacks.schedule import EpsPoint, EpsSchedule
from kdbench.config import Number, StrictModel, hash_payload, introduced
from kdbench.engine.checkpoint import MAX_WEIGHTS_BYTES_ENV, max_weights_bytes
from kdbench.models.normalization import NormalizeSetting

__all__ = [
    "AttackSection",
    "DataSection",
    "EvalSection",
    "MethodSection",
    "Recipe",
    "ResolvedRecipe",
    "StudentSection",
    "TeacherSection",
    "TrainSection",
    "apply_overrides",
    "check_files",
    "eval_size",
    "load_recipe",
    "load_recipes",
    "read_raw",
    "resolve",
    "teacher_overrides",
]

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


# ------------------------------------------------------------------------------------- resolution


@dataclass
class ResolvedRecipe:
    """A validated recipe with every component looked up and configured."""

    recipe: Recipe
    path: Path | None
    method_config: StrictModel
    attack_config: StrictModel
    student_config: StrictModel
    teacher_config: StrictModel | None
    data_config: StrictModel
    teacher_recipe: ResolvedRecipe | None = None
    overrides: list[str] = field(default_factory=list)
    #: The additional teachers of ``[teachers.<name>]``: model config and, when trained by a recipe, that recipe.
    extra_teacher_configs: dict[str, StrictModel] = field(default_factory=dict)
    extra_teacher_recipes: dict[str, ResolvedRecipe] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return str(self.path) if self.path else "<recipe>"

    def to_dict(self) -> dict[str, Any]:
        """The recipe with every default and component option filled in (what recipe.toml holds)."""
        return self._as_dict(lambda model: model.model_dump(mode="json"))

    def _as_dict(self, dump: Callable[[BaseModel], dict[str, Any]]) -> dict[str, Any]:
        r = self.recipe
        data = dump(r)
        data.pop("method", None)
        data.pop("attack", None)
        data["data"]["options"] = dump(self.data_config)
        data["student"]["options"] = dump(self.student_config)
        if r.teacher is not None and self.teacher_config is not None:
            data["teacher"]["options"] = dump(self.teacher_config)
            if not data["teacher"].get("set"):  # absent unless used: recipes without it keep their hash
                data["teacher"].pop("set", None)
            if self.teacher_recipe is not None:
                data["teacher"]["model"] = self.teacher_recipe.recipe.student.model
        for name, config in self.extra_teacher_configs.items():
            data["teachers"][name]["options"] = dump(config)
            if name in self.extra_teacher_recipes:
                data["teachers"][name]["model"] = self.extra_teacher_recipes[name].recipe.student.model
        data["method"] = {"name": r.method.name, **dump(self.method_config)}
        data["attack"] = {"name": r.attack.name, **dump(self.attack_config)}
        # The engine's schedule keys of [attack] (hash-neutral while unused, like `teachers`).
        section = dump(r.attack)
        data["attack"].update({k: section[k] for k in _ATTACK_ENGINE_KEYS if k in section})
        ordered: dict[str, Any] = {k: data[k] for k in ("name", "description", "seed") if k in data}
        ordered.update({k: v for k, v in data.items() if k not in ordered})
        return ordered

    @property
    def hash(self) -> str:
        """sha256 over what determines the result: the resolved recipe (minus its description) and,
        for a teacher trained by another recipe, that recipe's hash instead of its path.

        Options declared with `kdbench.config.introduced` are left out while they hold the default
        they were introduced with, so adding such an option keeps every existing recipe's hash; see
        `_drop_defaults` for the few keys that need more than that."""
        data = self._as_dict(hash_payload)
        data.pop("description", None)
        _drop_defaults(data)
        if self.teacher_recipe is not None:
            data["teacher"]["recipe"] = self.teacher_recipe.hash
        elif self.recipe.teacher is not None and self.recipe.teacher.checkpoint is not None:
            # the weights, not the path: a retrained teacher at the same path is a different run
            try:
                data["teacher"]["checkpoint"] = _file_digest(self.relative(self.recipe.teacher.checkpoint))
            except RecipeError as exc:
                raise exc.located(file=self.file) from None
        for name, section in self.recipe.teachers.items():
            if name in self.extra_teacher_recipes:
                data["teachers"][name]["recipe"] = self.extra_teacher_recipes[name].hash
            elif section.checkpoint is not None:
                try:
                    data["teachers"][name]["checkpoint"] = _file_digest(self.relative(section.checkpoint))
                except RecipeError as exc:
                    raise exc.located(file=self.file) from None
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:10]

    def relative(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe's folder (absolute paths unchanged)."""
        p = Path(os.path.expanduser(value))
        if p.is_absolute() or self.path is None:
            return p
        return self.path.parent / p


def _drop_defaults(data: dict[str, Any]) -> None:
    """What `introduced` cannot express: ``normalize = "dataset"`` means what the absent key means, and
    ``teacher.model_dir`` never changes a run (a zoo teacher is pinned by its name; result.json records
    its file's SHA-256)."""
    for section in ("student", "teacher"):
        table = data.get(section)
        if isinstance(table, dict) and table.get("normalize") == "dataset":
            del table["normalize"]
    extra = data.get("teachers")
    tables = [data.get("teacher"), *(extra.values() if isinstance(extra, dict) else ())]
    for table in tables:
        if isinstance(table, dict):
            table.pop("model_dir", None)
            if table.get("normalize") == "dataset":
                del table["normalize"]


def _set_dotted(raw: dict[str, Any], key: str, value: Any, file: str, origin: str) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(
                f"{origin} cannot descend into {'.'.join(parts[: i + 1])!r}, which is not a table",
                file=file,
                key=key,
            )
        node = child
    node[parts[-1]] = value


def _valid_path(path: Path, file: str, key: str) -> Path:
    """``path`` if the operating system can represent it (no NUL bytes), else a `RecipeError`."""
    try:
        path.resolve()
    except (ValueError, OSError) as exc:
        raise RecipeError(f"not a usable path ({exc})", file=file, key=key, hint="give a plain file path") from None
    return path


def _file_digest(path: Path) -> str:
    """sha256 of a weights file (of model.pt for a run folder), or the path when it does not exist yet."""
    file = path / "model.pt" if path.is_dir() else path
    try:
        stat = file.stat()
    except OSError:
        return str(path)
    # Checked before reading: /dev/zero would be hashed forever, a FIFO would block, a sparse file of
    # terabytes would take hours. Each is refused in one line naming the key.
    if not S_ISREG(stat.st_mode):
        raise RecipeError(
            f"{file} is not a regular file (a device, FIFO or socket)",
            key="teacher.checkpoint",
            hint="give a weights file (.pt) or a run folder",
        )
    if stat.st_size > max_weights_bytes():
        raise RecipeError(
            f"{file} is {stat.st_size / 2**30:.1f} GiB, above the {max_weights_bytes() / 2**30:.1f} GiB weights limit",
            key="teacher.checkpoint",
            hint=f"check the path (or raise {MAX_WEIGHTS_BYTES_ENV})",
        )
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw recipe dict (values parsed as TOML, else strings)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item!r} is not KEY=VALUE", file=file, hint="write e.g. --set train.epochs=5")
        _set_dotted(raw, key, _toml.parse_value(text.strip()), file, "--set")
    return raw


#: Keys holding paths relative to the recipe file; rebased when a recipe `extends` one elsewhere.
_PATH_KEYS = (("teacher", "recipe"), ("teacher", "checkpoint"), ("teacher", "model_dir"), ("data", "root"))
#: Keys of each ``[teachers.<name>]`` table holding paths, rebased like `_PATH_KEYS`.
_TEACHER_PATH_KEYS = ("recipe", "checkpoint", "model_dir")


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, anything else in ``child`` replaces ``base``."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a dict, with ``extends = "base.toml"`` merged in (recursively, cycles refused).

    Relative paths the base recipe holds (teacher.recipe, teacher.checkpoint, data.root) keep
    pointing where they pointed from the base file's folder.
    """
    raw = _toml.load_file(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    file = str(path)
    if not isinstance(parent, str):
        raise RecipeError("must be a path string", file=file, key="extends", hint='write extends = "base.toml"')
    base_path = _valid_path((path.parent / parent) if not Path(parent).is_absolute() else Path(parent), file, "extends")
    here = path.resolve()
    if base_path.resolve() in (*_chain, here):
        chain = " -> ".join(str(p) for p in (*_chain, here, base_path.resolve()))
        raise RecipeError(f"extends forms a cycle: {chain}", file=file, key="extends", hint="remove one of the extends")
    if not base_path.is_file():
        raise RecipeError(f"base recipe {str(base_path)!r} not found", file=file, key="extends")
    if len(_chain) + 1 >= MAX_EXTENDS_DEPTH:
        raise RecipeError(
            f"extends is nested more than {MAX_EXTENDS_DEPTH} deep", file=file, key="extends", hint="flatten the chain"
        )
    base = read_raw(base_path, (*_chain, here))
    if "sweep" in raw:  # a sweep is one product: the child's replaces the base's (an empty table removes it)
        base.pop("sweep", None)
    for section, key in _PATH_KEYS:
        value = base.get(section, {}).get(key) if isinstance(base.get(section), dict) else None
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            base[section][key] = os.path.relpath(base_path.parent / value, path.parent)
    extra = base.get("teachers")
    for table in extra.values() if isinstance(extra, dict) else ():
        for key in _TEACHER_PATH_KEYS:
            value = table.get(key) if isinstance(table, dict) else None
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                table[key] = os.path.relpath(base_path.parent / value, path.parent)
    return _merge(base, raw)


#: Largest number of variants one ``[sweep]`` may expand to (override with this environment variable).
MAX_SWEEP_ENV = "KDBENCH_MAX_SWEEP_VARIANTS"
_DEFAULT_MAX_SWEEP = 10_000

#: Deepest chain of ``extends`` (a recipe extending a recipe extending ...).
MAX_EXTENDS_DEPTH = 32


def _max_sweep_variants() -> int:
    text = os.environ.get(MAX_SWEEP_ENV, "").strip()
    try:
        return int(text) if text else _DEFAULT_MAX_SWEEP
    except ValueError:
        raise RecipeError(f"{MAX_SWEEP_ENV}={text!r} is not a whole number") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> ResolvedRecipe:
    """Read, override, validate and resolve a recipe file without a sweep (and the teacher recipe it names)."""
    return _load(Path(path), list(overrides or []), stack=())


def load_recipes(path: str | Path, overrides: list[str] | None = None) -> list[ResolvedRecipe]:
    """All variants of a recipe: one, or the product of its ``[sweep]`` table.

    ``[sweep]`` maps dotted keys to lists, e.g. ``"method.name" = ["kd", "ard"]`` and ``seed = [0, 1]``;
    each variant sets those keys (after ``--set`` overrides) and is named ``<name>-<value>-<value>``.
    """
    path = Path(path)
    file = str(path)
    overrides = list(overrides or [])
    raw = apply_overrides(read_raw(path), overrides, file)
    sweep = raw.pop("sweep", None)
    if sweep is None or sweep == {}:  # an empty [sweep] cancels an extended recipe's sweep
        return [resolve(raw, path=path, overrides=overrides, _stack=(path.resolve(),))]
    axes = _sweep_axes(sweep, file)
    count = math.prod(len(values) for values in axes.values())
    cap = _max_sweep_variants()
    if count > cap:  # counted before anything is expanded
        raise RecipeError(
            f"the sweep has {count} variants, above the limit of {cap}",
            file=file,
            key="sweep",
            hint=f"split it into several recipes or raise {MAX_SWEEP_ENV}",
        )
    variants = []
    for values in itertools.product(*axes.values()):
        variant = copy.deepcopy(raw)
        for key, value in zip(axes, values, strict=True):
            _set_dotted(variant, key, value, file, "[sweep]")
        base_name = variant.get("name")
        if isinstance(base_name, str):
            suffix = "-".join(re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(v)) for v in values)
            variant["name"] = f"{base_name}-{suffix}"
        label = ", ".join(f"{k}={v!r}" for k, v in zip(axes, values, strict=True))
        try:
            resolved = resolve(variant, path=path, overrides=overrides, _stack=(path.resolve(),))
        except RecipeError as exc:
            hint = f"{exc.hint}; " if exc.hint else ""
            raise RecipeError(
                exc.problem, file=exc.file, key=exc.key, hint=f"{hint}in the [sweep] variant {label}"
            ) from None
        variants.append(resolved)
    return variants


def _sweep_axes(sweep: Any, file: str) -> dict[str, list[Any]]:
    if not isinstance(sweep, dict) or not sweep:
        raise RecipeError("must be a table of dotted keys to lists", file=file, key="sweep")
    axes: dict[str, list[Any]] = {}
    for key, values in sweep.items():
        if isinstance(values, dict):  # a dotted key written without quotes: [sweep] method.name = [...]
            for sub, sub_values in _sweep_axes(values, file).items():
                axes[f"{key}.{sub}"] = sub_values
            continue
        if not isinstance(values, list) or not values:
            raise RecipeError("must be a non-empty list of values", file=file, key=f"sweep.{key}")
        axes[key] = values
    return axes


def teacher_overrides(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``teacher.set`` as ``(dotted key, value)`` pairs: ``{"train.epochs" = 2}`` and ``{train = {epochs = 2}}``
    (what ``--set teacher.set.train.epochs=2`` builds) both give ``[("train.epochs", 2)]``."""
    pairs: list[tuple[str, Any]] = []
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            pairs += teacher_overrides(value, dotted)
        else:
            pairs.append((dotted, value))
    return pairs


def _load(
    path: Path, overrides: list[str], stack: tuple[Path, ...], typed: Sequence[tuple[str, Any]] = ()
) -> ResolvedRecipe:
    file = str(path)
    key = path.resolve()
    if key in stack:
        chain = " -> ".join(str(p) for p in (*stack, key))
        raise RecipeError(f"teacher.recipe forms a cycle: {chain}", file=file, key="teacher.recipe")
    raw = read_raw(path)
    raw = apply_overrides(raw, overrides, file)
    for dotted, value in typed:
        _set_dotted(raw, dotted, value, file, "teacher.set")
    overrides = overrides + [f"{dotted}={_toml.format_value(value)}" for dotted, value in typed]
    if raw.get("sweep"):
        raise RecipeError(
            "a recipe with a [sweep] table names several runs",
            file=file,
            key="sweep",
            hint="run it with `kdbench run`, or point teacher.recipe at a recipe without a sweep",
        )
    raw.pop("sweep", None)  # an empty [sweep]: no sweep
    return resolve(raw, path=path, overrides=overrides, _stack=(*stack, key))


def _check_eval_size(recipe: Recipe, file: str) -> None:
    """``data.test_subset`` is the old name of the evaluation size: it may not contradict ``eval.n_examples``."""
    subset, n = recipe.data.test_subset, recipe.eval.n_examples
    if subset is not None and n is not None:
        raise RecipeError(
            f"the evaluation size is given twice ({subset} here, eval.n_examples = {n})",
            file=file,
            key="data.test_subset",
            hint=f"drop data.test_subset and keep eval.n_examples = {min(subset, n)} (the dataset's fixed selection)",
        )


def eval_size(recipe: Recipe) -> int | None:
    """How many test images the recipe evaluates: ``eval.n_examples``, else the old ``data.test_subset``."""
    return recipe.eval.n_examples if recipe.eval.n_examples is not None else recipe.data.test_subset


def resolve(
    raw: dict[str, Any],
    *,
    path: Path | None = None,
    overrides: list[str] | None = None,
    _stack: tuple[Path, ...] = (),
) -> ResolvedRecipe:
    """Validate a raw recipe dict in both phases. Errors are `RecipeError`s naming file and key."""
    file = str(path) if path else "<recipe>"
    recipe = _validate(Recipe, raw, file, "")

    method_cls = _lookup(METHODS, recipe.method.name, file, "method.name")
    method_config = _validate(method_cls.Config, recipe.method.options(), file, "method")
    for option, problem in method_cls.run_problems(method_config, epochs=recipe.train.epochs).items():
        raise RecipeError(problem, file=file, key=f"method.{option}")

    attack_cls = _lookup(ATTACKS, recipe.attack.name, file, "attack.name")
    attack_options = {**method_cls.attack_defaults, **recipe.attack.options()}
    attack_config = _validate(attack_cls.Config, attack_options, file, "attack")
    _check_eps_schedule(recipe.attack, attack_config, file)

    student_config = _model_config(recipe.student.model, recipe.student.options, file, "student")
    data_cls = _lookup(DATASETS, recipe.data.dataset, file, "data.dataset")
    data_config = _validate(data_cls.Config, recipe.data.options, file, "data.options")

    _check_eval_attacks(recipe.eval.attacks, file)
    _check_eval_size(recipe, file)

    resolved = ResolvedRecipe(
        recipe=recipe,
        path=path,
        method_config=method_config,
        attack_config=attack_config,
        student_config=student_config,
        teacher_config=None,
        data_config=data_config,
        overrides=list(overrides or []),
    )

    teacher = recipe.teacher
    if method_cls.needs_teacher and teacher is None:
        raise RecipeError(
            f"method {recipe.method.name!r} distils from a teacher but the recipe has no [teacher] table",
            file=file,
            key="teacher",
            hint='add [teacher] with model and checkpoint, or recipe = "<teacher recipe>.toml"',
        )
    if not method_cls.needs_teacher and teacher is not None:
        raise RecipeError(
            f"method {recipe.method.name!r} trains without a teacher",
            file=file,
            key="teacher",
            hint="remove the [teacher] table",
        )
    if teacher is not None:
        resolved.teacher_config, resolved.teacher_recipe = _resolve_teacher(teacher, resolved, "teacher", _stack)
    _check_extra_teacher_names(method_cls, recipe, file)
    for name, section in recipe.teachers.items():
        config, sub = _resolve_teacher(section, resolved, f"teachers.{name}", _stack)
        resolved.extra_teacher_configs[name] = config
        if sub is not None:
            resolved.extra_teacher_recipes[name] = sub
    return resolved


def _resolve_teacher(
    teacher: TeacherSection, resolved: ResolvedRecipe, key: str, stack: tuple[Path, ...]
) -> tuple[StrictModel, ResolvedRecipe | None]:
    """A teacher table's model config and, when a recipe trains it, that recipe (loaded recursively)."""
    file = resolved.file
    if teacher.zoo_name is not None:
        from kdbench.config import EmptyConfig
        from kdbench.models.zoo import check_zoo_name

        check_zoo_name(
            teacher.zoo_name, dataset=resolved.recipe.data.dataset, norm=resolved.recipe.eval.norm, file=file
        )
        return EmptyConfig(), None  # the zoo entry fixes the architecture and the weights
    teacher_model = teacher.model
    sub: ResolvedRecipe | None = None
    if teacher.recipe is not None:
        teacher_path = _valid_path(resolved.relative(teacher.recipe), file, f"{key}.recipe")
        try:
            sub = _load(teacher_path, [], stack, teacher_overrides(teacher.set))
        except RecipeError as exc:
            if exc.file == str(teacher_path) and exc.problem == "file not found":
                raise RecipeError(
                    f"teacher recipe {str(teacher_path)!r} not found", file=file, key=f"{key}.recipe"
                ) from None
            raise
        if teacher_model is not None and teacher_model != sub.recipe.student.model:
            raise RecipeError(
                f"{key}.model is {teacher_model!r} but the teacher recipe trains {sub.recipe.student.model!r}",
                file=file,
                key=f"{key}.model",
                hint=f"remove {key}.model or make them agree",
            )
        teacher_model = sub.recipe.student.model
        teacher_options = teacher.options or sub.recipe.student.options
        _check_teacher_normalize(teacher.normalize, sub.recipe.student.normalize, file, key)
    else:
        teacher_options = teacher.options
    assert teacher_model is not None
    return _model_config(teacher_model, teacher_options, file, key), sub


def _check_teacher_normalize(given: Any, trained: Any, file: str, key: str = "teacher") -> None:
    """A teacher trained by a recipe normalises as that recipe's student did; another setting is an error."""
    if given is not None and (given or "dataset") != (trained or "dataset"):
        shown = trained if isinstance(trained, str) or trained is None else trained.model_dump()
        raise RecipeError(
            f"{key}.normalize is {given if isinstance(given, str) else given.model_dump()!r} but the teacher recipe "
            f"trains its student with normalize = {shown or 'dataset'!r}",
            file=file,
            key=f"{key}.normalize",
            hint=f"remove {key}.normalize (it follows the teacher recipe) or make them agree",
        )


def _check_extra_teacher_names(method_cls: Any, recipe: Recipe, file: str) -> None:
    """Every teacher the method lists in ``extra_teachers`` is given, and no other one."""
    wanted: dict[str, str] = dict(method_cls.extra_teachers)
    for name in recipe.teachers:
        if name not in wanted:
            listing = did_you_mean(name, wanted) if wanted else f"method {recipe.method.name!r} reads no other teacher"
            raise RecipeError(
                f"method {recipe.method.name!r} reads no teacher named {name!r}",
                file=file,
                key=f"teachers.{name}",
                hint=f"{listing}; remove the table",
            )
    for name, purpose in wanted.items():
        if name not in recipe.teachers:
            raise RecipeError(
                f"method {recipe.method.name!r} needs a second teacher {name!r} ({purpose})",
                file=file,
                key=f"teachers.{name}",
                hint=f'add [teachers.{name}] with model and checkpoint, or recipe = "<teacher recipe>.toml"',
            )


def _check_eps_schedule(section: AttackSection, config: StrictModel, file: str) -> None:
    """Schedule points: strictly increasing epochs, each budget inside the attack's own eps."""
    points = section.eps_schedule
    if not points:
        return
    eps = getattr(config, "eps", None)
    if not isinstance(eps, float) or not isinstance(getattr(config, "step_size", None), float):
        raise RecipeError(
            f"attack {section.name!r} has no eps and step_size options to schedule",
            file=file,
            key="attack.eps_schedule",
            hint="use a gradient attack such as pgd, or remove eps_schedule",
        )
    for i, point in enumerate(points):
        if i and point.epoch <= points[i - 1].epoch:
            raise RecipeError(
                f"epoch {point.epoch} does not come after the previous point's {points[i - 1].epoch}",
                file=file,
                key=f"attack.eps_schedule.{i}.epoch",
                hint="list the points in increasing epoch order",
            )
        if point.eps > eps:
            raise RecipeError(
                f"eps {point.eps:.6g} exceeds the threat model's attack.eps {eps:.6g}",
                file=file,
                key=f"attack.eps_schedule.{i}.eps",
                hint="keep every scheduled eps <= attack.eps (raise attack.eps if the threat model is larger)",
            )


def check_files(resolved: ResolvedRecipe) -> None:
    """Files the recipe names must exist: ``teacher.checkpoint`` (here and down the teacher chain).

    Raises a `RecipeError` naming the key and the resolved path; called by ``kdbench validate`` and
    before a run builds its teacher.
    """
    tables = {"teacher": resolved.recipe.teacher, **{f"teachers.{n}": t for n, t in resolved.recipe.teachers.items()}}
    for key, teacher in tables.items():
        if teacher is None or teacher.checkpoint is None:
            continue
        path = resolved.relative(teacher.checkpoint)
        # Only a missing path is reported here; what exists but is no weights file (a device, a FIFO, a
        # huge file, a run folder without model.pt) is refused, with its reason, where it is read.
        if not os.path.lexists(path):
            raise RecipeError(
                f"file {str(path)!r} not found",
                file=resolved.file,
                key=f"{key}.checkpoint",
                hint="give the path of a weights file or a finished run folder, relative to the recipe",
            )
    for sub in [resolved.teacher_recipe, *resolved.extra_teacher_recipes.values()]:
        if sub is not None:
            check_files(sub)


def _model_config(name: str, options: dict[str, Any], file: str, section: str) -> StrictModel:
    cls = _lookup(MODELS, name, file, f"{section}.model")
    return _validate(cls.Config, options, file, f"{section}.options")


def _lookup(registry: Registry[Any], name: str, file: str, key: str) -> Any:
    try:
        cls = registry.get(name)
    except UserError as exc:
        raise RecipeError(str(exc), file=file, key=key) from None
    if ":" in name and not getattr(cls, "accepts_variant", False):
        base = name.split(":")[0]
        raise RecipeError(
            f"{registry.kind[:-1]} {base!r} takes no ':variant'", file=file, key=key, hint=f"write {base!r}"
        )
    return cls


def _check_eval_attacks(names: list[str], file: str) -> None:
    try:
        from kdbench.evaluation import check_attack_names
    except ImportError:  # evaluation suite not present: only clean accuracy
        unknown = [n for n in names if n != "clean"]
        if unknown:
            raise RecipeError(f"unknown evaluation attack {unknown[0]!r}", file=file, key="eval.attacks") from None
        return
    try:
        check_attack_names(names)
    except UserError as exc:
        raise RecipeError(str(exc), file=file, key="eval.attacks") from None


def _validate(model: type[BaseModel], data: Any, file: str, prefix: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _as_recipe_error(exc, model, file, prefix) from None


def _as_recipe_error(exc: ValidationError, model: type[BaseModel], file: str, prefix: str) -> RecipeError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        hint = did_you_mean(loc[-1], allowed) if allowed else "this table takes no keys here"
        return RecipeError(f"unknown key{more}", file=file, key=key, hint=hint)
    if kind == "missing":
        return RecipeError(f"required key is missing{more}", file=file, key=key, hint="add it")
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    given = first.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
    if isinstance(given, str) and kind in ("float_type", "int_type", "bool_type"):
        # strict types: a quoted number is a string in TOML, never silently converted
        return RecipeError(f"{message}{shown}{more}", file=file, key=key, hint=f"write it without quotes: {given}")
    return RecipeError(f"{message}{shown}{more}", file=file, key=key)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the (nested) pydantic model at ``loc``, for did-you-mean hints."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))
