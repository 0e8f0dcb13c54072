"""Resolution: a recipe dict validated in two phases, its components looked up once, its teacher recipes
resolved recursively, and the stable hash (`ResolvedRecipe`). The checks across sections are in
`kdbench.recipe.consistency`."""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from kdbench import _toml
from kdbench._errors import RecipeError, UserError
from kdbench._registry import ATTACKS, DATASETS, METHODS, MODELS, Registry
from kdbench.config import StrictModel
from kdbench.recipe.consistency import (
    check_eps_schedule,
    check_eval_attacks,
    check_eval_size,
    check_extra_teacher_names,
    check_teacher_normalize,
)
from kdbench.recipe.files import (
    MAX_SWEEP_ENV,
    _max_sweep_variants,
    _set_dotted,
    _sweep_axes,
    _valid_path,
    apply_overrides,
    read_raw,
    teacher_overrides,
)
from kdbench.recipe.resolved import ResolvedRecipe
from kdbench.recipe.schema import (
    Recipe,
    TeacherSection,
)
from kdbench.recipe.validation import _validate


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
    check_eps_schedule(recipe.attack, attack_config, file)

    student_config = _model_config(recipe.student.model, recipe.student.options, file, "student")
    data_cls = _lookup(DATASETS, recipe.data.dataset, file, "data.dataset")
    data_config = _validate(data_cls.Config, recipe.data.options, file, "data.options")

    check_eval_attacks(recipe.eval.attacks, file)
    check_eval_size(recipe, file)

    resolved = ResolvedRecipe(
        recipe=recipe,
        path=path,
        method_config=method_config,
        attack_config=attack_config,
        student_config=student_config,
        teacher_config=None,
        data_config=data_config,
        method_class=method_cls,
        attack_class=attack_cls,
        data_class=data_cls,
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
    check_extra_teacher_names(method_cls, recipe, file)
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
        check_teacher_normalize(teacher.normalize, sub.recipe.student.normalize, file, key)
    else:
        teacher_options = teacher.options
    assert teacher_model is not None
    return _model_config(teacher_model, teacher_options, file, key), sub


#: A component base class (`Method`, `Attack`, `Network`, `DatasetSource`), for `_lookup`.
_Component = TypeVar("_Component")


def _model_config(name: str, options: dict[str, Any], file: str, section: str) -> StrictModel:
    cls = _lookup(MODELS, name, file, f"{section}.model")
    return _validate(cls.Config, options, file, f"{section}.options")


def _lookup(registry: Registry[_Component], name: str, file: str, key: str) -> type[_Component]:
    try:
        cls = registry.get(name)
    except UserError as exc:
        raise RecipeError(str(exc), file=file, key=key) from None
    # Only models declare accepts_variant (a method, attack or dataset never takes a ':variant').
    if ":" in name and not getattr(cls, "accepts_variant", False):
        base = name.split(":")[0]
        raise RecipeError(
            f"{registry.kind[:-1]} {base!r} takes no ':variant'", file=file, key=key, hint=f"write {base!r}"
        )
    return cls
