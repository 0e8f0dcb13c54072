"""`ResolvedRecipe`: a validated recipe with its component classes and configs, what its run folder's
recipe.toml holds (`to_dict`), and the stable hash (`hash`; `kdbench.config.introduced` keeps it stable
across upgrades)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from kdbench._errors import RecipeError
from kdbench.config import StrictModel, hash_payload
from kdbench.engine.checkpoint import MAX_WEIGHTS_BYTES_ENV, max_weights_bytes

if TYPE_CHECKING:
    from kdbench.attacks.base import Attack
    from kdbench.data.base import DatasetSource
    from kdbench.method import Method

from kdbench.recipe.schema import (
    _ATTACK_ENGINE_KEYS,
    Recipe,
)


@dataclass
class ResolvedRecipe:
    """A validated recipe with every component looked up and configured.

    The method, attack and dataset classes are looked up once, here, and kept: later code reads
    ``resolved.method_class`` instead of asking the registry again (models are built by name, since
    the student and each teacher name their own).
    """

    recipe: Recipe
    path: Path | None
    method_config: StrictModel
    attack_config: StrictModel
    student_config: StrictModel
    teacher_config: StrictModel | None
    data_config: StrictModel
    method_class: type[Method]
    attack_class: type[Attack]
    data_class: type[DatasetSource]
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
