"""Checks across a recipe's sections, which no single section's schema can express.

The evaluation size given once, the eps schedule inside the attack's budget, the evaluation attack
names known, a recipe-trained teacher's normalisation followed, the method's extra teachers given
by name, and the files the recipe names present. Each raises a one-line `RecipeError` naming the file
and the key.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from kdbench._errors import RecipeError, UserError, did_you_mean
from kdbench.config import StrictModel
from kdbench.recipe.resolved import ResolvedRecipe
from kdbench.recipe.schema import AttackSection, Recipe

if TYPE_CHECKING:
    from kdbench.method import Method

__all__ = [
    "check_eps_schedule",
    "check_eval_attacks",
    "check_eval_size",
    "check_extra_teacher_names",
    "check_files",
    "check_teacher_normalize",
    "eval_size",
]


def check_eval_size(recipe: Recipe, file: str) -> None:
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


def check_teacher_normalize(given: Any, trained: Any, file: str, key: str = "teacher") -> None:
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


def check_extra_teacher_names(method_cls: type[Method], recipe: Recipe, file: str) -> None:
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


def check_eps_schedule(section: AttackSection, config: StrictModel, file: str) -> None:
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


def check_eval_attacks(names: list[str], file: str) -> None:
    """Every ``eval.attacks`` name is an evaluation attack kdbench knows."""
    from kdbench.evaluation import check_attack_names  # imported on use: the recipe package stays light

    try:
        check_attack_names(names)
    except UserError as exc:
        raise RecipeError(str(exc), file=file, key="eval.attacks") from None
