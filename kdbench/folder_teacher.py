"""The teacher of a finished run folder, identified from the folder: for results written before result.json
recorded ``teacher_source`` (kdbench before the teacher identities of docs/teachers.md).

The leaderboard ranks students together only when they distil from the same teacher
(`kdbench.leaderboard.setting`, ``teacher_source.key``), so such a result stands on a board of its own.
``kdbench eval RUN --update-result`` records the identity this module derives, the one a run of today
records for the same teacher table (`kdbench.teachers.TeacherIdentity`):

* ``teacher.recipe``: the finished teacher run the folder points at (`RunFolder.teacher_weights`:
  beside the student's, then in the runs folder), identified by the recipe hash in that run's
  recipe.toml header, ``recipe:<hash[:12]>``;
* ``teacher.checkpoint``: the weights file, identified by its SHA-256, ``sha256:<hex[:12]>``.

A zoo teacher always recorded its identity, so it never needs this. Nothing is guessed: a teacher run
whose folder records no hash, or weights that are gone, give no identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench.engine.checkpoint import max_weights_bytes
from kdbench.models.zoo import file_sha256
from kdbench.run_folder import RunFolder, recorded_recipe_hash
from kdbench.teachers import TeacherIdentity

__all__ = ["folder_teacher_identity"]


def folder_teacher_identity(folder: RunFolder, runs_dir: Path | None = None) -> TeacherIdentity | None:
    """The identity of the teacher ``folder``'s run distilled from, or None when it cannot be established.

    Raises `kdbench.UserError` (from `RunFolder.teacher_weights`) when the folder names a teacher recipe
    whose finished run cannot be found.
    """
    teacher = folder.recipe_table().get("teacher")
    if not isinstance(teacher, dict) or isinstance(teacher.get("zoo_name"), str):
        return None
    weights = folder.teacher_weights(runs_dir)
    if weights is None:
        return None
    file = weights / "model.pt" if weights.is_dir() else weights
    if isinstance(teacher.get("recipe"), str):
        run = RunFolder(file.parent)
        recipe_hash = recorded_recipe_hash(run.recipe_file)
        if recipe_hash is None:
            return None
        model = _student_model(run) or teacher.get("model")
        if not isinstance(model, str):
            return None
        return TeacherIdentity("recipe", model, recipe_hash=recipe_hash, path=str(file))
    model = teacher.get("model")
    if not isinstance(model, str) or not file.is_file() or file.stat().st_size > max_weights_bytes():
        return None
    return TeacherIdentity("checkpoint", model, sha256=file_sha256(file), path=str(weights))


def _student_model(run: RunFolder) -> str | None:
    """The network a teacher run trained (its recipe's ``student.model``)."""
    student: Any = run.recipe_table().get("student")
    model = student.get("model") if isinstance(student, dict) else None
    return model if isinstance(model, str) else None
