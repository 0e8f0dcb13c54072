"""Where a run's teachers come from, and who they are.

The teacher (``[teacher]``) is one of

* ``teacher.recipe``: the student of another recipe, trained first unless its run is finished;
* ``teacher.checkpoint``: a weights file (a kdbench model.pt, a training checkpoint, or a bare state_dict
  such as TRADES' ``model_cifar_wrn.pt``) for the registered ``teacher.model``;
* ``teacher.model = "robustbench:<name>"``: a RobustBench zoo model (`kdbench.models.zoo`).

Its identity (`TeacherIdentity`) pins the weights, not the path: the teacher recipe's hash, the
checkpoint file's SHA-256, or the zoo name plus its file's SHA-256. result.json records it, the
teacher's own evaluation is cached under it (`kdbench.teacher_eval`), and the leaderboard groups
students by it.

The additional teachers of a method that names them (``[teachers.<name>]``, `Method.extra_teachers`)
come from the same three sources (`build_extra_teacher`). Both builders take the runner of a teacher
recipe as a callable, so this module builds networks and never runs a recipe itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench._errors import RecipeError
from kdbench.build import (
    build_network,
    build_source,
    check_label_spaces,
    checkpoint_num_classes,
    load_network_metadata,
    load_network_weights,
    network_spec,
)
from kdbench.data.base import DatasetInfo
from kdbench.engine.checkpoint import max_weights_bytes
from kdbench.models.base import Network, freeze
from kdbench.models.normalization import (
    Normalization,
    check_recorded,
    recorded_normalization,
    resolve_normalization,
)
from kdbench.models.zoo import default_model_dir, file_sha256, load_zoo_teacher
from kdbench.recipe import ResolvedRecipe, check_files

__all__ = [
    "BuiltTeacher",
    "TeacherIdentity",
    "build_extra_teacher",
    "build_teacher",
    "teacher_normalization",
]


@dataclass(frozen=True)
class TeacherIdentity:
    """What pins a teacher's weights. ``key`` is short and stable: ``recipe:<hash>``, ``sha256:<hex>``
    or ``robustbench:<name>@<hex>`` (first 12 hex digits)."""

    source: str  # "recipe" | "checkpoint" | "robustbench" | "untrained" (kdbench bench only)
    model: str
    recipe_hash: str | None = None
    sha256: str | None = None
    zoo: dict[str, str] | None = None  # {"name", "dataset", "threat_model"}
    path: str | None = None

    @property
    def key(self) -> str:
        if self.source == "recipe":
            return f"recipe:{(self.recipe_hash or '')[:12]}"
        if self.source == "robustbench":
            assert self.zoo is not None
            return f"robustbench:{self.zoo['name']}@{(self.sha256 or '')[:12]}"
        return f"sha256:{(self.sha256 or '')[:12]}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "key": self.key, "model": self.model}
        for name in ("recipe_hash", "sha256", "zoo", "path"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass
class BuiltTeacher:
    """A frozen teacher network, its identity and its input normalisation (None: inside a zoo model)."""

    network: Network
    identity: TeacherIdentity
    normalization: Normalization | None
    info: dict[str, Any] = field(default_factory=dict)


def teacher_normalization(resolved: ResolvedRecipe, info: DatasetInfo) -> Normalization | None:
    """The teacher's resolved normalisation: ``teacher.normalize``, else the teacher recipe's student's,
    else the dataset's; None for a zoo teacher (which normalises inside itself)."""
    teacher = resolved.recipe.teacher
    assert teacher is not None
    if teacher.zoo_name is not None:
        return None
    setting = teacher.normalize
    if setting is None and resolved.teacher_recipe is not None:
        setting = resolved.teacher_recipe.recipe.student.normalize
    return resolve_normalization(setting, tuple(info.mean), tuple(info.std))


def _model_dir(resolved: ResolvedRecipe) -> Path:
    teacher = resolved.recipe.teacher
    assert teacher is not None
    return resolved.relative(teacher.model_dir) if teacher.model_dir else default_model_dir()


def build_teacher(
    resolved: ResolvedRecipe,
    student_classes: int,
    train_teacher_recipe: Callable[[ResolvedRecipe], Path | None],
    say: Callable[[str], None],
    *,
    untrained_ok: bool = False,
) -> BuiltTeacher:
    """The frozen teacher of ``resolved``, the one builder `kdbench.run` and ``kdbench bench`` share.

    ``train_teacher_recipe`` runs a teacher recipe (or finds its finished run) and returns its run
    folder. With ``untrained_ok`` (``kdbench bench``, which times a step and trains nothing) it may return
    None, and a missing teacher checkpoint is allowed too: the teacher is then its architecture with
    random weights (identity path ``"random init"``), which costs exactly as much per step.
    """
    r = resolved.recipe
    teacher = r.teacher
    assert teacher is not None
    assert resolved.teacher_config is not None
    if teacher.zoo_name is not None:
        info = build_source(resolved).info()
        model_dir = _model_dir(resolved)
        zoo = load_zoo_teacher(
            teacher.zoo_name,
            dataset=r.data.dataset,
            norm=r.eval.norm,
            model_dir=model_dir,
            download=teacher.download,
            image_size=info.image_size,
            file=resolved.file,
        )
        check_label_spaces(resolved, zoo.network.num_classes, student_classes)
        freeze(zoo.network)
        say(f"teacher: RobustBench {zoo.name} ({zoo.dataset}, {zoo.threat_model}) from {zoo.path}")
        identity = TeacherIdentity(
            "robustbench",
            teacher.model or "",
            sha256=zoo.sha256,
            zoo={"name": zoo.name, "dataset": zoo.dataset, "threat_model": zoo.threat_model},
            path=str(zoo.path),
        )
        return BuiltTeacher(zoo.network, identity, None)

    if resolved.teacher_recipe is not None:
        sub = resolved.teacher_recipe
        info = build_source(sub).info()
        check_label_spaces(resolved, info.num_classes, student_classes)  # before spending time on the teacher
        say(f"teacher: recipe {os.path.normpath(sub.file)} (hash {sub.short_hash})")
        run = train_teacher_recipe(sub)
        model_name = sub.recipe.student.model
        if run is None:
            return _untrained(resolved, model_name, info, info.num_classes, student_classes)
        weights = run / "model.pt"
        identity = TeacherIdentity("recipe", model_name, recipe_hash=sub.hash, path=str(weights))
    else:
        assert teacher.checkpoint is not None and teacher.model is not None
        weights = resolved.relative(teacher.checkpoint)
        info = build_source(resolved).info()
        model_name = teacher.model
        if untrained_ok and not weights.exists():
            return _untrained(resolved, model_name, info, student_classes, student_classes)
        check_files(resolved)  # the message names teacher.checkpoint and the resolved path
        file = weights / "model.pt" if weights.is_dir() else weights
        # a missing, special or oversized file is reported by the loader (issue 12's checks), never hashed here
        sha = file_sha256(file) if file.is_file() and file.stat().st_size <= max_weights_bytes() else None
        identity = TeacherIdentity("checkpoint", model_name, sha256=sha, path=str(weights))
    normalization = teacher_normalization(resolved, info)
    assert normalization is not None
    meta = load_network_metadata(weights)
    check_recorded(
        recorded_normalization(meta, tuple(info.mean), tuple(info.std)),
        normalization,
        file=resolved.file,
        key="teacher.normalize",
        what=f"the teacher's weights {weights}",
    )
    classes = checkpoint_num_classes(weights) or (info.num_classes if resolved.teacher_recipe else student_classes)
    check_label_spaces(resolved, classes, student_classes)
    network = build_network(model_name, resolved.teacher_config, network_spec(info, classes, normalization))
    load_network_weights(network, weights)
    freeze(network)
    return BuiltTeacher(network, identity, normalization)


def _untrained(
    resolved: ResolvedRecipe, model_name: str, info: DatasetInfo, classes: int, student_classes: int
) -> BuiltTeacher:
    """The teacher's architecture with random weights (``kdbench bench`` without a trained teacher)."""
    assert resolved.teacher_config is not None
    check_label_spaces(resolved, classes, student_classes)
    normalization = teacher_normalization(resolved, info)
    network = build_network(model_name, resolved.teacher_config, network_spec(info, classes, normalization))
    freeze(network)
    return BuiltTeacher(network, TeacherIdentity("untrained", model_name, path="random init"), normalization)


# ------------------------------------------------------------------ the additional teachers


def build_extra_teacher(
    resolved: ResolvedRecipe,
    name: str,
    student: DatasetInfo,
    train_teacher_recipe: Callable[[ResolvedRecipe], Path],
    say: Callable[[str], None],
) -> Network:
    """The additional teacher ``[teachers.<name>]``, frozen; refused when its classes or input size differ.

    It sees the student's batches, so its input size must be the student's; its label space must be the
    student's whenever the method reads teacher logits (`Method.teacher_logit_readers`). Like the main
    teacher it may be a RobustBench zoo model, and it normalises as ``normalize`` (else its recipe's
    student, else the dataset) says; a kdbench model.pt that records another normalisation is refused.
    ``train_teacher_recipe`` runs its recipe (or finds its finished run) and returns the run folder, as
    for `build_teacher`.
    """
    section = resolved.recipe.teachers[name]
    key = f"teachers.{name}"
    if section.zoo_name is not None:
        zoo = load_zoo_teacher(
            section.zoo_name,
            dataset=resolved.recipe.data.dataset,
            norm=resolved.recipe.eval.norm,
            model_dir=resolved.relative(section.model_dir) if section.model_dir else default_model_dir(),
            download=section.download,
            image_size=student.image_size,
            file=resolved.file,
        )
        _check_extra_teacher_fits(resolved, key, "model", zoo.network.num_classes, student.image_size, student)
        say(f"teacher {name!r}: RobustBench {zoo.name} ({zoo.dataset}, {zoo.threat_model}) from {zoo.path}")
        freeze(zoo.network)
        return zoo.network
    sub = resolved.extra_teacher_recipes.get(name)
    setting = section.normalize
    if sub is not None:
        info = build_source(sub).info()
        _check_extra_teacher_fits(resolved, key, "recipe", info.num_classes, info.image_size, student)
        say(f"teacher {name!r}: recipe {os.path.normpath(sub.file)} (hash {sub.short_hash})")
        weights, model_name = train_teacher_recipe(sub) / "model.pt", sub.recipe.student.model
        if setting is None:
            setting = sub.recipe.student.normalize
    else:
        assert section.checkpoint is not None and section.model is not None
        info = student
        weights, model_name = resolved.relative(section.checkpoint), section.model
    normalization = resolve_normalization(setting, tuple(info.mean), tuple(info.std))
    file = weights / "model.pt" if weights.is_dir() else weights
    meta = load_network_metadata(file)
    check_recorded(
        recorded_normalization(meta, tuple(info.mean), tuple(info.std)),
        normalization,
        file=resolved.file,
        key=f"{key}.normalize",
        what=f"the weights of teacher {name!r} {weights}",
    )
    classes = checkpoint_num_classes(weights) or info.num_classes
    _check_extra_teacher_fits(resolved, key, "model", classes, info.image_size, student)
    spec = network_spec(info, classes, normalization)
    teacher = build_network(model_name, resolved.extra_teacher_configs[name], spec)
    load_network_weights(teacher, weights, what=f"teacher {name!r}")
    freeze(teacher)
    return teacher


def _check_extra_teacher_fits(
    resolved: ResolvedRecipe, key: str, part: str, classes: int, image_size: int, student: DatasetInfo
) -> None:
    """Refuse, under ``<key>.<part>``, a teacher the student's batches do not fit (see `build_extra_teacher`)."""
    readers = resolved.method_class.teacher_logit_readers(resolved.method_config)
    if readers and classes != student.num_classes:
        raise RecipeError(
            f"method {resolved.recipe.method.name!r} compares this teacher's logits with the student's "
            f"({', '.join(readers)}), but it has {classes} classes and the student {student.num_classes}",
            file=resolved.file,
            key=f"{key}.{part}",
            hint="use a teacher of the student's dataset",
        )
    if image_size != student.image_size:
        raise RecipeError(
            f"this teacher takes {image_size}-pixel inputs but the student's images are {student.image_size} pixels",
            file=resolved.file,
            key=f"{key}.{part}",
            hint="use a teacher trained on images of the student's size",
        )
