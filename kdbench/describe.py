"""What `kdbench show NAME` prints: a component's summary, formula and every option, as a recipe writes it.

Types are written the way a TOML recipe spells values: ``float``, ``int | None``, a Literal as its
choices (``"current" | "memory"``), a tuple as an array (``[float, float, float]``), a list as
``[str, ...]``, a mapping as ``{str = float, ...}``, a nested config as a ``table`` whose keys are
listed under it with dotted names (``schedule.start``; ``steps[].eps`` for an array of tables).
Numeric constraints of the field follow the type (``float > 0``, ``float in [0, 1)``). Defaults are
TOML values too: ``true``, ``"clean"``, ``[0.5, 0.5, 0.5]``, and ``"8/255"`` for a number option
(`kdbench.config.Number`, which accepts fractions) whose default is a small fraction.

The formula is the first indented block of the docstring of the module that defines the component
(plugins write their loss there, with the citation in the paragraph above it, docs/writing-a-plugin.md).
"""

from __future__ import annotations

import enum
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import PurePath
from typing import Any, Literal, Union

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from kdbench.config import HASH_NEUTRAL, parse_number

__all__ = ["OptionDoc", "describe_component", "formula_block", "option_docs", "toml_type", "toml_value"]

#: Where a recipe writes the options of each kind of component.
RECIPE_TABLES = {
    "methods": '[method] (next to name = "{name}")',
    "attacks": '[attack] (next to name = "{name}")',
    "models": "[student.options] or [teacher.options]",
    "datasets": "[data.options]",
}
#: Descriptions are wrapped to this width (the options' own lines are never cut).
WRAP = 100


@dataclass(frozen=True)
class OptionDoc:
    """One option of a component's Config, ready to print."""

    key: str  # dotted below a nested table: "schedule.start", "steps[].eps"
    type: str  # as TOML writes it: 'float > 0', '"clean" | "off"', 'int | None'
    default: str  # a TOML value, "required", or "not set" (None)
    description: str
    since: str | None = None  # the version that introduced it (`kdbench.config.introduced`)


# ------------------------------------------------------------------------------------------ types


def _constraint_text(metadata: typing.Iterable[Any]) -> str:
    """``> 0``, ``in [0, 1)``, ``length >= 1`` from annotated-types / pydantic field metadata."""
    lower = upper = None
    parts: list[str] = []
    flat = [m for item in metadata for m in (item.metadata if isinstance(item, FieldInfo) else [item])]
    for item in flat:  # Annotated[int, Field(gt=0)] carries its constraints on the FieldInfo
        if isinstance(item, at.Interval):  # Annotated[float, Interval(gt=0, le=1)]
            values = (item.gt, item.ge, item.lt, item.le)
            for make, value in zip((at.Gt, at.Ge, at.Lt, at.Le), values, strict=True):
                if value is not None:
                    lower, upper = _bound(make(value), lower, upper)
        elif isinstance(item, at.Gt | at.Ge | at.Lt | at.Le):
            lower, upper = _bound(item, lower, upper)
        elif isinstance(item, at.MultipleOf):
            parts.append(f"multiple of {_number(item.multiple_of)}")
        elif isinstance(item, at.MinLen):
            parts.append(f"length >= {item.min_length}")
        elif isinstance(item, at.MaxLen):
            parts.append(f"length <= {item.max_length}")
    if lower is not None and upper is not None:
        (lop, lv), (uop, uv) = lower, upper
        parts.insert(0, f"in {'[' if lop == '>=' else '('}{_number(lv)}, {_number(uv)}{']' if uop == '<=' else ')'}")
    elif lower is not None or upper is not None:
        op, value = lower or upper  # type: ignore[misc]
        parts.insert(0, f"{op} {_number(value)}")
    return ", ".join(parts)


def _bound(item: Any, lower: Any, upper: Any) -> tuple[Any, Any]:
    if isinstance(item, at.Gt):
        return (">", item.gt), upper
    if isinstance(item, at.Ge):
        return (">=", item.ge), upper
    if isinstance(item, at.Lt):
        return lower, ("<", item.lt)
    return lower, ("<=", item.le)


def _number(value: Any) -> str:
    """A bound as TOML writes it: ``10_000_000`` for large integers, ``0.5``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:_}" if abs(value) >= 100_000 else str(value)
    return repr(value)


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, m1, m2]`` -> ``(T, [m1, m2])`` (nested Annotated flattened)."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata += extra
    return annotation, metadata


def toml_type(annotation: Any, metadata: typing.Iterable[Any] = ()) -> str:
    """How a recipe writes a value of ``annotation``: ``float > 0``, ``int | None``, ``"a" | "b"``."""
    annotation, inner = _unwrap(annotation)
    constraint = _constraint_text([*inner, *metadata])
    text = _bare_type(annotation)
    return f"{text} {constraint}" if constraint else text


def _bare_type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Any:
        return "any value"
    if origin is Literal:
        return " | ".join(_literal(v) for v in args)
    if origin in (Union, types.UnionType):
        arms = [toml_type(a) for a in args if a is not type(None)]
        return " | ".join(arms + (["None"] if type(None) in args else []))
    if origin in (list, set, frozenset, typing.Sequence, typing.MutableSequence) or annotation in (list, set):
        return f"[{toml_type(args[0]) if args else 'any value'}, ...]"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{toml_type(args[0])}, ...]"
        return "[" + ", ".join(toml_type(a) for a in args) + "]"
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        key, value = (toml_type(a) for a in args) if args else ("str", "any value")
        return f"{{{key} = {value}, ...}}"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "table"
        if issubclass(annotation, enum.Enum):
            return " | ".join(_literal(m.value) for m in annotation)
        if issubclass(annotation, bool | int | float | str):
            return annotation.__name__
        if issubclass(annotation, PurePath):
            return "path (a string)"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _literal(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    return toml_value(value)


# ----------------------------------------------------------------------------------------- values


def toml_value(value: Any, *, fraction: bool = False) -> str:
    """A default as a recipe writes it; ``fraction`` writes small exact fractions as ``"8/255"``."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, str | PurePath):
        return json.dumps(str(value))
    if isinstance(value, float) and fraction and len(repr(value)) > 6:  # 0.5 stays 0.5
        exact = Fraction(value).limit_denominator(1000)
        if float(exact) == value:  # 8/255, 5/6: what the paper and the recipe write
            return f'"{exact.numerator}/{exact.denominator}"'
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, BaseModel):
        fields = type(value).model_fields.items()
        inner = ", ".join(f"{k} = {toml_value(getattr(value, k), fraction=_accepts_fractions(i))}" for k, i in fields)
        return f"{{{inner}}}"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(toml_value(v, fraction=fraction) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v, fraction=fraction)}" for k, v in value.items()) + "}"
    return repr(value)


def _accepts_fractions(info: FieldInfo) -> bool:
    """A `kdbench.config.Number` field (its validator parses ``"8/255"``)."""
    _, inner = _unwrap(info.annotation)
    return any(getattr(m, "func", None) is parse_number for m in [*info.metadata, *inner])


# ---------------------------------------------------------------------------------------- options


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The config class of a nested table (``(cls, False)``) or an array of tables (``(cls, True)``)."""
    annotation, _ = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple) and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    if origin in (Union, types.UnionType):
        models = [found for a in args if (found := _nested_model(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def option_docs(config: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> Iterator[OptionDoc]:
    """Every option of ``config``, nested tables expanded under dotted keys, in declaration order."""
    for key, info in config.model_fields.items():
        if defaults is not None:
            default: Any = getattr(defaults, key)
        else:
            default = info.get_default(call_default_factory=True)
        nested = _nested_model(info.annotation)
        extra = info.json_schema_extra
        marker = extra.get(HASH_NEUTRAL) if isinstance(extra, dict) else None
        since = str(marker["since"]) if isinstance(marker, dict) and "since" in marker else None
        if default is PydanticUndefined:
            shown = "required"
        elif nested is not None and isinstance(default, BaseModel):
            shown = "see below"
        else:
            shown = toml_value(default, fraction=_accepts_fractions(info))
        kind = toml_type(info.annotation, info.metadata)
        if nested is not None and nested[1]:
            kind = kind.replace(nested[0].__name__, "table")
        yield OptionDoc(prefix + key, kind, shown, info.description or "", since)
        if nested is not None:
            cls, many = nested
            yield from option_docs(
                cls,
                f"{prefix}{key}{'[]' if many else ''}.",
                default if isinstance(default, BaseModel) else None,
            )


def format_options(options: typing.Sequence[OptionDoc]) -> list[str]:
    """``  key: type (default D)`` and the description wrapped below, six spaces in."""
    lines = []
    for option in options:
        default = option.default if option.default in ("required", "see below") else f"default {option.default}"
        since = f", added in {option.since}" if option.since else ""
        lines.append(f"  {option.key}: {option.type} ({default}{since})")
        if option.description:
            lines += textwrap.wrap(option.description, WRAP, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return lines


# ---------------------------------------------------------------------------------------- formula


def formula_block(module_doc: str | None) -> str | None:
    """The first indented block of a module docstring (a literal block: indented lines after a blank
    line, as reStructuredText has it), dedented; None when there is none. The continuation lines of
    a bullet or a paragraph follow a non-blank line and are not a block."""
    if not module_doc:
        return None
    block: list[str] = []
    previous = ""
    for line in inspect.cleandoc(module_doc).splitlines():
        indented = line.startswith((" ", "\t")) and bool(line.strip())
        if block and (indented or not line.strip()):  # blank lines inside the block belong to it
            block.append(line)
        elif block:
            break
        elif indented and not previous.strip():
            block.append(line)
        previous = line
    text = textwrap.dedent("\n".join(block)).strip("\n")
    return text or None


def _citation(module_doc: str) -> str:
    """The module docstring's first paragraph (plugins name the paper and the code there)."""
    first = inspect.cleandoc(module_doc).split("\n\n", 1)[0]
    return " ".join(first.split()).removesuffix("::").rstrip(":")


# ------------------------------------------------------------------------------------------- page


def describe_component(kind: str, name: str, provider: str, target: str, obj: Any) -> str:
    """The text of `kdbench show` for a registered component ``obj`` of registry ``kind``."""
    lines = [f"{kind[:-1]} {name}  ({provider}, {target})", "", inspect.getdoc(obj) or "(no description)"]
    module_doc = inspect.getdoc(sys.modules.get(obj.__module__))
    formula = formula_block(module_doc)
    if formula is not None and module_doc is not None:
        lines += ["", f"formula, from the docstring of {obj.__module__}:"]
        lines += textwrap.wrap(_citation(module_doc), WRAP, initial_indent="  ", subsequent_indent="  ")
        lines += [""] + [f"    {line}".rstrip() for line in formula.splitlines()]
    config: type[BaseModel] = getattr(obj, "Config", None) or BaseModel
    options = list(option_docs(config))
    lines.append("")
    if not options:
        lines.append("options: none")
    else:
        where = RECIPE_TABLES.get(kind, "").format(name=name)
        lines.append(f"options{f', in a recipe under {where}' if where else ''}:")
        lines += format_options(options)
    attack_defaults = getattr(obj, "attack_defaults", None) or {}
    if attack_defaults:
        shown = ", ".join(f"{k} = {toml_value(v, fraction=isinstance(v, float))}" for k, v in attack_defaults.items())
        lines.append(f"training-attack defaults: {shown}")
    for teacher, purpose in (getattr(obj, "extra_teachers", None) or {}).items():
        lines.append(f"additional teacher [teachers.{teacher}]: {purpose}")
    return "\n".join(lines)
