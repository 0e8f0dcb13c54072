"""A run folder and everything in it: the one place that knows its files.

::

    runs/<name>/<hash10>/
        recipe.toml      the resolved recipe, self-contained (see below), headed by its name and hash
        metrics.jsonl    one JSON object per finished epoch
        train.log        the run's progress lines
        checkpoints/     crash-safe training checkpoints (`kdbench.engine.checkpoint.CheckpointStore`)
        model.pt         the trained network's weights (+ model.pt.sha256)
        model_best_val.pt  with data.val_size: the best-on-validation weights
        result.json      `kdbench.results.Result`
        result.json.orig the result before the first ``kdbench eval --update-result``
        eval.json        the latest ``kdbench eval`` of the folder
        evaluation.pending.json  an evaluation kept when result.json hit a full disk

**Self-contained recipe.toml.** Paths in a recipe are relative to the recipe's own folder, which the run
folder knows nothing about. The copy written here has every path rebased onto the run folder
(``data.root``, ``eval.examples``, ``teacher.checkpoint``, ``teacher.model_dir`` and those of
``[teachers.<name>]``), and a teacher trained by a recipe is given as that teacher run's ``model.pt``.
Where it came from (the original recipe, its overrides, each teacher recipe and the teacher run's hash)
is kept in a ``[run]`` table that is provenance, not a setting: the recipe loader drops it. So
``kdbench eval``, ``analyze`` and ``export`` of a folder need nothing but the folder; folders written by
an older kdbench (a teacher recipe relative to a file elsewhere) are still read, by looking for the
teacher run beside the student's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kdbench import _toml
from kdbench._errors import UserError
from kdbench.engine.checkpoint import (
    CheckpointStore,
    DiskFullError,
    atomic_write_bytes,
    remove_stale_temp_files,
    verify_checksum,
    write_with_checksum,
)
from kdbench.folder_recipe import PROVENANCE_TABLE, self_contained_recipe
from kdbench.results import SCHEMA_VERSION, Result, read_result, write_json

if TYPE_CHECKING:
    from kdbench.recipe import ResolvedRecipe

__all__ = ["PROVENANCE_TABLE", "RunFolder", "RunStatus", "recorded_recipe_hash"]

RunStatus = Literal["done", "partial", "new"]
_HEADER = "# resolved recipe "
#: How `RunFolder.teacher_weights` asks for a teacher it cannot find (``kdbench analyze``'s option).
_TEACHER_HINT = "pass --teacher-checkpoint PATH (the teacher's model.pt or run folder)"


class RunFolder:
    """``runs/<name>/<hash10>/`` of one resolved recipe: claim, lock, status, recipe, model, result."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # files ------------------------------------------------------------------------------------

    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.toml"

    @property
    def model_file(self) -> Path:
        return self.path / "model.pt"

    @property
    def best_val_model_file(self) -> Path:
        return self.path / "model_best_val.pt"

    @property
    def result_file(self) -> Path:
        return self.path / "result.json"

    @property
    def original_result_file(self) -> Path:
        return self.path / "result.json.orig"

    @property
    def eval_file(self) -> Path:
        return self.path / "eval.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoints(self, owner: dict[str, str] | None = None) -> CheckpointStore:
        """The training checkpoints; with ``owner``, those of another run are refused when loading."""
        return CheckpointStore(self.checkpoint_dir, owner=owner)

    # state ------------------------------------------------------------------------------------

    def recorded_hash(self) -> str | None:
        """The recipe hash in recipe.toml's first line (``# resolved recipe NAME, hash HASH``)."""
        return recorded_recipe_hash(self.recipe_file)

    def read_result(self) -> Result | None:
        """result.json as a `Result`, or None when absent; an unusable one is None with a warning."""
        result = read_result(self.result_file)
        if result is None and self.result_file.exists():
            print(f"kdbench: warning: ignoring {self.result_file}: not a readable kdbench result", file=sys.stderr)
        return result

    def finished(self, recipe_hash: str) -> Result | None:
        """result.json of the recipe ``recipe_hash``, when model.pt beside it passes its checksum.

        A damaged model.pt (or one without checksum, written by an older kdbench) makes the run unfinished,
        with a warning: the run then rebuilds model.pt from its last good checkpoint and evaluates again
        (or trains again when no checkpoint is left), so a damaged file is never used or reported.
        """
        result = self.read_result()
        if result is None or result.recipe_hash != recipe_hash:
            return None
        problem = verify_checksum(self.model_file) if self.model_file.is_file() else "is missing"
        if problem is not None:
            print(
                f"kdbench: warning: {self.model_file} {problem}; the run is not counted as finished and is rebuilt "
                "from its last good checkpoint",
                file=sys.stderr,
            )
            return None
        return result

    def status(self, recipe_hash: str) -> RunStatus:
        """``done`` (a verified result), ``partial`` (checkpoints, no result) or ``new``."""
        if self.finished(recipe_hash) is not None:
            return "done"
        if self.checkpoints().positions():
            return "partial"
        return "new"

    # writing ----------------------------------------------------------------------------------

    def claim(self, resolved: ResolvedRecipe, runs_dir: Path | None = None) -> None:
        """Write the self-contained recipe.toml, refusing a folder that holds another recipe's run."""
        self.path.mkdir(parents=True, exist_ok=True)
        header = f"resolved recipe {resolved.recipe.name}, hash {resolved.hash}"
        first = _first_line(self.recipe_file) if self.recipe_file.is_file() else None
        if first is not None and first.startswith(_HEADER):
            if resolved.hash in first:
                return
            raise UserError(
                f"{self.path} holds a run of another recipe ({first.lstrip('# ')}); "
                "choose another --out or delete that folder"
            )
        if self.recipe_file.is_file():
            # Empty, binary or hand-edited: rewritten. Safe, since checkpoints record their own run and those
            # of another run are refused anyway.
            print(
                f"kdbench: warning: {self.recipe_file} is empty, unreadable or not kdbench's; rewriting it",
                file=sys.stderr,
            )
        source = f"from {resolved.file}" + (f" with --set {' '.join(resolved.overrides)}" if resolved.overrides else "")
        table = self_contained_recipe(resolved, self.path, runs_dir)
        atomic_write_bytes(self.recipe_file, _toml.dumps(table, header=f"{header}\n{source}").encode())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer per folder (a second ``kdbench run`` of the same recipe fails fast); stale temporary
        files of a killed writer are removed once the lock is held."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path} is being written by another kdbench process") from None
            remove_stale_temp_files(self.path)
            yield

    def write_model(self, payload: bytes, *, best_val: bool = False) -> Path:
        """Write model.pt (or model_best_val.pt) atomically with its checksum."""
        path = self.best_val_model_file if best_val else self.model_file
        write_with_checksum(path, payload)
        return path

    def write_result(self, result: Result, *, evaluation: dict[str, Any], weights_digest: str) -> None:
        """Write result.json; on a full disk keep ``evaluation`` elsewhere so that the rerun does not redo it."""
        assert result.recipe_hash is not None
        try:
            result.write(self.result_file)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            kept = None
            payload = {"schema_version": SCHEMA_VERSION, "recipe_hash": result.recipe_hash, "weights": weights_digest}
            for spot in self._pending_places(result.recipe_hash):
                try:
                    write_json(spot, {**payload, "report": evaluation})
                except OSError:
                    continue
                kept = spot
                break
            where = f"the evaluation is kept in {kept}" if kept else "the evaluation could not be kept anywhere"
            raise DiskFullError(
                f"disk full while writing {self.result_file} ({exc.strerror or 'no space left'}); {where}; "
                "free some space and run the same command (it writes the result without evaluating again)"
            ) from None
        for spot in self._pending_places(result.recipe_hash):
            with contextlib.suppress(OSError):
                spot.unlink()

    def pending_evaluation(self, recipe_hash: str, weights_digest: str) -> dict[str, Any] | None:
        """An evaluation kept by an earlier attempt whose result.json hit a full disk, for these exact weights."""
        import json

        for spot in self._pending_places(recipe_hash):
            try:
                kept = json.loads(spot.read_text()) if spot.is_file() else None
            except (OSError, ValueError, RecursionError):
                continue
            if not isinstance(kept, dict) or kept.get("schema_version") != SCHEMA_VERSION:
                continue
            if kept.get("recipe_hash") == recipe_hash and kept.get("weights") == weights_digest:
                report = kept.get("report")
                if isinstance(report, dict) and isinstance(report.get("metrics"), dict):
                    print(f"kdbench: using the evaluation kept in {spot} (not evaluating again)", file=sys.stderr)
                    return report
        return None

    def _pending_places(self, recipe_hash: str) -> list[Path]:
        """Where an evaluation is kept when result.json cannot be written: the folder, else the temp folder."""
        elsewhere = Path(tempfile.gettempdir()) / f"kdbench-evaluation-{recipe_hash}.json"
        return [self.path / "evaluation.pending.json", elsewhere]

    # reading a finished folder --------------------------------------------------------------------

    def require_model(self, doing: str = "use it") -> Path:
        """model.pt of a finished run; an unfinished or foreign folder is a one-line `UserError`."""
        if not self.path.exists():
            raise UserError(f"{self.path} not found; give a run folder (runs/<name>/<hash>/) or its model.pt")
        if self.model_file.is_file():
            return self.model_file
        positions = self.checkpoints().positions()
        if positions:
            newest = self.checkpoints().path(positions[0]).name
            raise UserError(
                f"run {self.path} is not finished (no model.pt yet; newest checkpoint {newest}); "
                f"finish it with `kdbench run` on its recipe, then {doing}"
            )
        if not self.recipe_file.is_file():
            raise UserError(f"{self.path} is not a kdbench run folder (no recipe.toml, no model.pt)")
        raise UserError(f"{self.path} has no model.pt: the run is not finished (run `kdbench run` on its recipe first)")

    def recipe_table(self) -> dict[str, Any]:
        """recipe.toml's settings (the provenance table left out); `UserError` when there is none."""
        if not self.recipe_file.is_file():
            raise UserError(f"{self.path} is not a kdbench run folder (no recipe.toml)")
        raw = _toml.load_file(self.recipe_file)
        raw.pop(PROVENANCE_TABLE, None)
        return raw

    def provenance(self) -> dict[str, Any]:
        """recipe.toml's ``[run]`` table (empty for folders of an older kdbench)."""
        if not self.recipe_file.is_file():
            return {}
        table = _toml.load_file(self.recipe_file).get(PROVENANCE_TABLE)
        return table if isinstance(table, dict) else {}

    def is_self_contained(self) -> bool:
        """Whether recipe.toml was written with paths rebased onto the folder (see the module docstring)."""
        return bool(self.provenance())

    def resolve(self) -> ResolvedRecipe:
        """The run's recipe resolved from the folder alone (its teacher is the teacher run's weights).

        Its hash is that of the folder's recipe, not the run's (a teacher given by its weights hashes
        differently from one given by its recipe): the run's own hash is `recorded_hash`.
        """
        from kdbench.recipe import resolve

        return resolve(self.recipe_table(), path=self.recipe_file)

    def teacher_weights(self, runs_dir: Path | None = None, hint: str = _TEACHER_HINT) -> Path | None:
        """The teacher's weights (a model.pt or a teacher run folder), or None for a run without teacher.

        Self-contained folders name them in recipe.toml; for folders of an older kdbench whose teacher
        was a recipe, the teacher run is looked for beside the student's and in the runs folder. ``hint``
        ends the error when it is not found (the calling command's way to name the teacher).
        """
        raw = self.recipe_table()
        teacher = raw.get("teacher")
        if not isinstance(teacher, dict):
            return None
        checkpoint = teacher.get("checkpoint")
        if isinstance(checkpoint, str):
            path = Path(os.path.expanduser(checkpoint))
            return path if path.is_absolute() else self.path / path
        if not isinstance(teacher.get("recipe"), str):
            return None  # a zoo teacher: its weights come from the zoo
        from kdbench._errors import RecipeError
        from kdbench.recipe import load_recipe
        from kdbench.run import default_out_dir

        try:
            resolved = load_recipe(self.recipe_file)
        except RecipeError as exc:
            if exc.key == "teacher.recipe":
                raise UserError(
                    f"{self.recipe_file}: teacher.recipe {teacher.get('recipe')!r} does not resolve from the run "
                    f"folder (an older kdbench wrote it relative to the original recipe); {hint}"
                ) from None
            raise
        sub = resolved.teacher_recipe
        assert sub is not None
        candidates = [self.path.parent.parent / sub.recipe.name / sub.short_hash, default_out_dir(sub, runs_dir)]
        for folder in candidates:
            if (folder / "model.pt").is_file():
                return folder
        raise UserError(
            f"no finished run of the teacher recipe {sub.file} (hash {sub.short_hash}) in "
            f"{' or '.join(str(c) for c in candidates)}; {hint}"
        )


def recorded_recipe_hash(path: Path) -> str | None:
    """The hash in the kdbench header of a run folder's recipe file (``# resolved recipe NAME, hash HASH``),
    or None when the file has no such header (a recipe written by hand)."""
    line = _first_line(path)
    if line is None or not line.startswith(_HEADER) or ", hash " not in line:
        return None
    return line.rsplit(", hash ", 1)[1].strip() or None


def _first_line(path: Path) -> str | None:
    """The first line of a text file, or None when it is empty, binary or unreadable (reads 4 kB at most)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        line = head.split(b"\n", 1)[0].decode("utf-8").rstrip("\r") if head else None
    except (OSError, UnicodeDecodeError):
        return None
    return line if line and line.isprintable() else None
