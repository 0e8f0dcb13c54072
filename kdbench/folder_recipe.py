"""The run folder's self-contained recipe.toml (`kdbench.run_folder`): a resolved recipe with its paths
rebased onto the folder, a teacher recipe replaced by the teacher run's model.pt, and the ``[run]``
provenance table (the original recipe, its overrides, each teacher recipe and its run's hash)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdbench.recipe import ResolvedRecipe


#: The top-level table of a run folder's recipe.toml that records where the recipe came from.
PROVENANCE_TABLE = "run"

__all__ = ["PROVENANCE_TABLE", "self_contained_recipe"]


def self_contained_recipe(resolved: ResolvedRecipe, folder: Path, runs_dir: Path | None) -> dict[str, Any]:
    """``resolved`` as recipe.toml holds it inside ``folder``: paths rebased onto the folder, a teacher
    recipe replaced by its run's model.pt, and the ``[run]`` provenance table (see the module docstring)."""
    from kdbench.run import default_out_dir

    table = resolved.to_dict()
    here = folder.resolve()

    def rebase(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return os.path.relpath(resolved.relative(value).resolve(), here)

    data = table.get("data", {})
    if data.get("root") is not None:
        data["root"] = rebase(data["root"])
    evaluation = table.get("eval", {})
    if isinstance(evaluation.get("examples"), str):
        evaluation["examples"] = rebase(evaluation["examples"])
    provenance: dict[str, Any] = {"hash": resolved.hash, "recipe": _absolute(resolved)}
    if resolved.overrides:
        provenance["overrides"] = list(resolved.overrides)

    def rebase_teacher(section: dict[str, Any], sub: ResolvedRecipe | None, default_normalize: Any) -> dict[str, Any]:
        for key in ("checkpoint", "model_dir"):
            if section.get(key) is not None:
                section[key] = rebase(section[key])
        if sub is None:
            return {}
        run = default_out_dir(sub, runs_dir)
        section.pop("recipe", None)
        section.pop("set", None)
        section["checkpoint"] = os.path.relpath((run / "model.pt").resolve(), here)
        if section.get("normalize") is None and default_normalize is not None:
            section["normalize"] = default_normalize  # what the recipe teacher defaulted to
        return {"recipe": _absolute(sub), "hash": sub.hash, "run": os.path.relpath(run.resolve(), here)}

    if isinstance(table.get("teacher"), dict):
        sub = resolved.teacher_recipe
        normalize = sub.to_dict()["student"].get("normalize") if sub is not None else None
        record = rebase_teacher(table["teacher"], sub, normalize)
        if record:
            provenance["teacher"] = record
    for name, section in (table.get("teachers") or {}).items():
        sub = resolved.extra_teacher_recipes.get(name)
        normalize = sub.to_dict()["student"].get("normalize") if sub is not None else None
        record = rebase_teacher(section, sub, normalize)
        if record:
            provenance.setdefault("teachers", {})[name] = record
    table[PROVENANCE_TABLE] = provenance
    return table


def _absolute(resolved: ResolvedRecipe) -> str:
    return str(resolved.path.resolve()) if resolved.path is not None else resolved.file
