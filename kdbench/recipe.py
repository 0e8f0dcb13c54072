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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kdbench import _toml
from kdbench._errors import RecipeError, UserError, did_you_mean
from kdbench._registry import ATTACKS, DATASETS, METHODS, MODELS, Registry
from kdbench.config import Number, StrictModel, hash_payload, introduced
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
    "load_recipe",
    "load_recipes",
    "read_raw",
    "resolve",
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
    test_subset: int | None = Field(None, gt=0, description="evaluate on a class-balanced subset of this size")
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
    n_examples: int | None = Field(None, gt=0, description="evaluate on the first N test images (None: all)")
    batch_size: int = Field(256, gt=0)
    norm: Literal["linf", "l2"] = "linf"
    eps: Number = Field(8 / 255, ge=0, description='evaluation budget, e.g. "8/255"')
    teacher: bool = introduced(
        True,
        since="0.2",
        description="also evaluate the teacher on the same examples (cached per teacher in <runs>/.teacher-evals)",
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

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    seed: int = Field(0, ge=0)
    data: DataSection
    teacher: TeacherSection | None = None
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
            if self.teacher_recipe is not None:
                data["teacher"]["model"] = self.teacher_recipe.recipe.student.model
        data["method"] = {"name": r.method.name, **dump(self.method_config)}
        data["attack"] = {"name": r.attack.name, **dump(self.attack_config)}
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
            data["teacher"]["checkpoint"] = _file_digest(self.relative(self.recipe.teacher.checkpoint))
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
    teacher = data.get("teacher")
    if isinstance(teacher, dict):
        teacher.pop("model_dir", None)


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
    base = read_raw(base_path, (*_chain, here))
    if "sweep" in raw:  # a sweep is one product: the child's replaces the base's (an empty table removes it)
        base.pop("sweep", None)
    for section, key in _PATH_KEYS:
        value = base.get(section, {}).get(key) if isinstance(base.get(section), dict) else None
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            base[section][key] = os.path.relpath(base_path.parent / value, path.parent)
    return _merge(base, raw)


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


def _load(path: Path, overrides: list[str], stack: tuple[Path, ...]) -> ResolvedRecipe:
    file = str(path)
    key = path.resolve()
    if key in stack:
        chain = " -> ".join(str(p) for p in (*stack, key))
        raise RecipeError(f"teacher.recipe forms a cycle: {chain}", file=file, key="teacher.recipe")
    raw = read_raw(path)
    raw = apply_overrides(raw, overrides, file)
    if raw.get("sweep"):
        raise RecipeError(
            "a recipe with a [sweep] table names several runs",
            file=file,
            key="sweep",
            hint="run it with `kdbench run`, or point teacher.recipe at a recipe without a sweep",
        )
    raw.pop("sweep", None)  # an empty [sweep]: no sweep
    return resolve(raw, path=path, overrides=overrides, _stack=(*stack, key))


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

    attack_cls = _lookup(ATTACKS, recipe.attack.name, file, "attack.name")
    attack_options = {**method_cls.attack_defaults, **recipe.attack.options()}
    attack_config = _validate(attack_cls.Config, attack_options, file, "attack")

    student_config = _model_config(recipe.student.model, recipe.student.options, file, "student")
    data_cls = _lookup(DATASETS, recipe.data.dataset, file, "data.dataset")
    data_config = _validate(data_cls.Config, recipe.data.options, file, "data.options")

    _check_eval_attacks(recipe.eval.attacks, file)

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
    if teacher is not None and teacher.zoo_name is not None:
        from kdbench.config import EmptyConfig
        from kdbench.models.zoo import check_zoo_name

        check_zoo_name(teacher.zoo_name, dataset=recipe.data.dataset, norm=recipe.eval.norm, file=file)
        resolved.teacher_config = EmptyConfig()  # the zoo entry fixes the architecture and the weights
    elif teacher is not None:
        teacher_model = teacher.model
        if teacher.recipe is not None:
            teacher_path = _valid_path(resolved.relative(teacher.recipe), file, "teacher.recipe")
            try:
                sub = _load(teacher_path, [], _stack)
            except RecipeError as exc:
                if exc.file == str(teacher_path) and exc.problem == "file not found":
                    raise RecipeError(
                        f"teacher recipe {str(teacher_path)!r} not found", file=file, key="teacher.recipe"
                    ) from None
                raise
            resolved.teacher_recipe = sub
            if teacher_model is not None and teacher_model != sub.recipe.student.model:
                raise RecipeError(
                    f"teacher.model is {teacher_model!r} but the teacher recipe trains {sub.recipe.student.model!r}",
                    file=file,
                    key="teacher.model",
                    hint="remove teacher.model or make them agree",
                )
            teacher_model = sub.recipe.student.model
            teacher_options = teacher.options or sub.recipe.student.options
            _check_teacher_normalize(teacher.normalize, sub.recipe.student.normalize, file)
        else:
            teacher_options = teacher.options
        assert teacher_model is not None
        resolved.teacher_config = _model_config(teacher_model, teacher_options, file, "teacher")
    return resolved


def _check_teacher_normalize(given: Any, trained: Any, file: str) -> None:
    """A teacher trained by a recipe normalises as that recipe's student did; another setting is an error."""
    if given is not None and (given or "dataset") != (trained or "dataset"):
        shown = trained if isinstance(trained, str) or trained is None else trained.model_dump()
        raise RecipeError(
            f"teacher.normalize is {given if isinstance(given, str) else given.model_dump()!r} but the teacher recipe "
            f"trains its student with normalize = {shown or 'dataset'!r}",
            file=file,
            key="teacher.normalize",
            hint="remove teacher.normalize (it follows the teacher recipe) or make them agree",
        )


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
