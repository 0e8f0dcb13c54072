"""The teacher of a finished run folder, identified from the folder: for results written before result.json
recorded ``teacher_source`` (kdbench before the teacher identities of docs/teachers.md).

The leaderboard ranks students together only when they distil from the same teacher
(`kdbench.leaderboard.setting`, ``teacher_source.key``), so such a result stands on a board of its own.
``kdbench eval RUN --update-result`` records the identity this module derives, the one a run of today
records for the same teacher table (`kdbench.teachers.TeacherIdentity`):

* ``teacher.recipe``: the finished teacher run, identified by the recipe hash in its recipe.toml
  header, ``recipe:<hash[:12]>``. The run is the one the folder points at (`RunFolder.teacher_weights`:
  beside the student's, then in the runs folder); older folders wrote the recipe's path relative to the
  original recipe, which may not resolve from the folder, so ``--teacher RUN`` can name it;
* ``teacher.checkpoint``: the weights file, identified by its SHA-256, ``sha256:<hex[:12]>``.

A zoo teacher always recorded its identity, so it never needs this. Nothing is guessed: a teacher run
whose folder records no hash, or a teacher of another architecture than the recipe's, is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench._errors import UserError
from kdbench.engine.checkpoint import max_weights_bytes
from kdbench.models.zoo import file_sha256
from kdbench.run_folder import RunFolder, recorded_recipe_hash
from kdbench.teachers import TeacherIdentity

__all__ = ["folder_teacher_identity"]


def folder_teacher_identity(folder: RunFolder, given: Path | None = None) -> TeacherIdentity | None:
    """The identity of the teacher ``folder``'s run distilled from; None for a run without one (or a zoo
    teacher). ``given``: the teacher run folder or weights file, as the user names it (``--teacher``);
    else the one the folder points at.

    Raises `kdbench.UserError` when the teacher cannot be found or does not fit the folder's recipe.
    """
    teacher = folder.recipe_table().get("teacher")
    if not isinstance(teacher, dict) or isinstance(teacher.get("zoo_name"), str):
        return None
    weights = given if given is not None else folder.teacher_weights(hint="name the teacher run with --teacher RUN")
    if weights is None:
        return None
    file = weights / "model.pt" if weights.is_dir() else weights
    if not file.is_file():
        raise UserError(f"the teacher's weights {file} are not there; give the teacher run folder or weights file")
    wanted = teacher.get("model")
    if isinstance(teacher.get("recipe"), str):
        run = RunFolder(file.parent)
        recipe_hash = recorded_recipe_hash(run.recipe_file)
        if recipe_hash is None:
            raise UserError(
                f"{file.parent} is not a finished kdbench run (no recipe.toml with its hash), but "
                f"{folder.recipe_file} names a teacher recipe; give the teacher's run folder"
            )
        model = _trained_model(run)
        if model is None or (isinstance(wanted, str) and wanted != model):
            raise UserError(
                f"{file.parent} trained {model!r}, but {folder.recipe_file} names teacher.model {wanted!r}; "
                "give the run of the teacher recipe this student distilled from"
            )
        return TeacherIdentity("recipe", model, recipe_hash=recipe_hash, path=str(file))
    if not isinstance(wanted, str):
        return None
    if file.stat().st_size > max_weights_bytes():
        raise UserError(f"{file} is larger than the weights files kdbench reads; give the teacher's weights")
    return TeacherIdentity("checkpoint", wanted, sha256=file_sha256(file), path=str(weights))


def _trained_model(run: RunFolder) -> str | None:
    """The network a teacher run trained (its recipe's ``student.model``)."""
    student: Any = run.recipe_table().get("student")
    model = student.get("model") if isinstance(student, dict) else None
    return model if isinstance(model, str) else None
