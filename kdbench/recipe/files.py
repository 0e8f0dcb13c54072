"""Recipe files as dicts: reading TOML with ``extends`` (paths rebased, cycles refused), ``--set`` overrides,
and the ``[sweep]`` axes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench import _toml
from kdbench._errors import RecipeError

if TYPE_CHECKING:
    pass


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


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a raw recipe dict (values parsed as TOML, else strings)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {item!r} is not KEY=VALUE", file=file, hint="write e.g. --set train.epochs=5")
        _set_dotted(raw, key, _toml.parse_value(text.strip()), file, "--set")
    return raw


#: Keys holding paths relative to the recipe file; rebased when a recipe `extends` one elsewhere
#: (``eval.examples`` only when it is a path, not a list of indices).
_PATH_KEYS = (
    ("teacher", "recipe"),
    ("teacher", "checkpoint"),
    ("teacher", "model_dir"),
    ("data", "root"),
    ("eval", "examples"),
)
#: Keys of each ``[teachers.<name>]`` table holding paths, rebased like `_PATH_KEYS`.
_TEACHER_PATH_KEYS = ("recipe", "checkpoint", "model_dir")


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, anything else in ``child`` replaces ``base``."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _drop_provenance(raw: dict[str, Any], path: Path) -> None:
    """A run folder's recipe.toml records where it came from in a ``[run]`` table
    (`kdbench.run_folder`): provenance, not a setting, so it is left out when the file is read as a recipe."""
    from kdbench.run_folder import PROVENANCE_TABLE, recorded_recipe_hash

    if isinstance(raw.get(PROVENANCE_TABLE), dict) and recorded_recipe_hash(path) is not None:
        raw.pop(PROVENANCE_TABLE)


def read_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a dict, with ``extends = "base.toml"`` merged in (recursively, cycles refused).

    Relative paths the base recipe holds (teacher.recipe, teacher.checkpoint, data.root) keep
    pointing where they pointed from the base file's folder.
    """
    raw = _toml.load_file(path)
    _drop_provenance(raw, path)
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
    if len(_chain) + 1 >= MAX_EXTENDS_DEPTH:
        raise RecipeError(
            f"extends is nested more than {MAX_EXTENDS_DEPTH} deep", file=file, key="extends", hint="flatten the chain"
        )
    base = read_raw(base_path, (*_chain, here))
    if "sweep" in raw:  # a sweep is one product: the child's replaces the base's (an empty table removes it)
        base.pop("sweep", None)
    for section, key in _PATH_KEYS:
        value = base.get(section, {}).get(key) if isinstance(base.get(section), dict) else None
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            base[section][key] = os.path.relpath(base_path.parent / value, path.parent)
    extra = base.get("teachers")
    for table in extra.values() if isinstance(extra, dict) else ():
        for key in _TEACHER_PATH_KEYS:
            value = table.get(key) if isinstance(table, dict) else None
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                table[key] = os.path.relpath(base_path.parent / value, path.parent)
    return _merge(base, raw)


#: Largest number of variants one ``[sweep]`` may expand to (override with this environment variable).
MAX_SWEEP_ENV = "KDBENCH_MAX_SWEEP_VARIANTS"
_DEFAULT_MAX_SWEEP = 10_000

#: Deepest chain of ``extends`` (a recipe extending a recipe extending ...).
MAX_EXTENDS_DEPTH = 32


def _max_sweep_variants() -> int:
    text = os.environ.get(MAX_SWEEP_ENV, "").strip()
    try:
        return int(text) if text else _DEFAULT_MAX_SWEEP
    except ValueError:
        raise RecipeError(f"{MAX_SWEEP_ENV}={text!r} is not a whole number") from None


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


def teacher_overrides(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``teacher.set`` as ``(dotted key, value)`` pairs: ``{"train.epochs" = 2}`` and ``{train = {epochs = 2}}``
    (what ``--set teacher.set.train.epochs=2`` builds) both give ``[("train.epochs", 2)]``."""
    pairs: list[tuple[str, Any]] = []
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            pairs += teacher_overrides(value, dotted)
        else:
            pairs.append((dotted, value))
    return pairs
