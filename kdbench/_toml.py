"""Reading recipes (stdlib tomllib) and writing resolved recipes back as TOML.

The writer handles exactly what a resolved recipe holds: tables, arrays, strings, numbers and
booleans. ``None`` has no TOML spelling, so such keys are omitted (reading back gives the default).
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any

from kdbench._errors import RecipeError

__all__ = ["MAX_RECIPE_BYTES", "dumps", "format_value", "load_file", "parse_value"]

#: A recipe is a few kB of TOML; a larger file is refused before it is read.
MAX_RECIPE_BYTES = 4 * 2**20


def load_file(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable or malformed file is a `RecipeError` naming it."""
    try:
        st = path.stat()
        # A FIFO would block, /dev/zero would fill the memory (a directory fails to read just below).
        if not S_ISREG(st.st_mode) and not S_ISDIR(st.st_mode):
            raise RecipeError(
                "not a regular file (a device, FIFO or socket)",
                file=str(path),
                hint="give the path of a .toml recipe file",
            )
        if st.st_size > MAX_RECIPE_BYTES:
            raise RecipeError(
                f"{st.st_size} bytes, too large for a recipe (limit {MAX_RECIPE_BYTES})",
                file=str(path),
                hint="give the path of a .toml recipe file",
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError("file not found", file=str(path), hint="check the path") from None
    except OSError as exc:
        raise RecipeError(
            f"cannot read file ({exc.strerror})", file=str(path), hint="give the path of a readable .toml recipe file"
        ) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecipeError("not UTF-8 text", file=str(path), hint="save the recipe as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"invalid TOML: {exc}", file=str(path), hint="fix the syntax at that line") from None


def parse_value(text: str) -> Any:
    """Interpret a ``--set`` value as TOML (``5``, ``1e-3``, ``true``, ``["a", "b"]``), else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write non-finite float {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items() if v is not None)
        return "{" + items + "}" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def format_value(value: Any) -> str:
    """A value as TOML text, the inverse of `parse_value` (``2`` -> ``2``, ``"a"`` -> ``"a"``)."""
    return _scalar(value)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def dumps(data: dict[str, Any], header: str = "") -> str:
    """Serialise a nested dict: scalars first, then one ``[table]`` per nested dict (recursively)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def emit(table: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append("")
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{_key(key)} = {_scalar(value)}")
        for key, value in tables.items():
            emit(value, f"{prefix}.{_key(key)}" if prefix else _key(key))

    emit(data, "")
    return "\n".join(lines).lstrip("\n") + "\n"
