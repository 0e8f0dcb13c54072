"""Recipes: TOML experiment descriptions, validated in two phases and resolved to a stable hash.

Phase 1 validates the core schema below (unknown keys and NaN/inf rejected). Phase 2 looks the named
components up in the registries and validates their own tables against each component's ``Config``:
``[method]`` (besides ``name``), ``[attack]`` (besides ``name``, on top of the method's
``attack_defaults``), ``student.options``, ``teacher.options`` and ``data.options``. The result is a
`ResolvedRecipe`: the fully defaulted recipe, its component configs, and a hash of both.
"""

from __future__ import annotations

from kdbench.engine.config import TrainSection
from kdbench.recipe.consistency import check_files, eval_size
from kdbench.recipe.files import MAX_EXTENDS_DEPTH, MAX_SWEEP_ENV, apply_overrides, read_raw, teacher_overrides
from kdbench.recipe.resolve import load_recipe, load_recipes, resolve
from kdbench.recipe.resolved import ResolvedRecipe
from kdbench.recipe.schema import (
    NAME_PATTERN,
    ZOO_PREFIX,
    AttackSection,
    DataSection,
    EvalSection,
    MethodSection,
    Recipe,
    StudentSection,
    TeacherSection,
)

__all__ = [
    "MAX_EXTENDS_DEPTH",
    "MAX_SWEEP_ENV",
    "NAME_PATTERN",
    "ZOO_PREFIX",
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
