"""Building blocks for component configurations: strict pydantic models and CIFAR-style numbers.

Every registered component (model, dataset, attack, method) declares its options as a subclass of
`StrictModel`; recipes are validated against it, so a typo is an error and never a silent default.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import to_jsonable_python
from typing_extensions import TypeVar

__all__ = [
    "HASH_NEUTRAL",
    "ConfigT",
    "EmptyConfig",
    "Number",
    "StrictModel",
    "hash_payload",
    "introduced",
    "parse_number",
]

#: Key in a field's ``json_schema_extra`` marking an option added after recipes already existed.
HASH_NEUTRAL = "kdbench_introduced"


class StrictModel(BaseModel):
    """Frozen, extra keys forbidden, NaN and infinity rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True, strict=True)


class EmptyConfig(StrictModel):
    """A component without options."""


#: The configuration type a component is generic over: ``class KD(Method[KDConfig])`` types
#: ``self.config`` as ``KDConfig``. A bare ``Method`` (or ``Attack``, ``DatasetSource``) means
#: ``Method[StrictModel]`` (PEP 696 default, hence typing_extensions' TypeVar on Python 3.11).
#: Covariant, so that a ``Method[KDConfig]`` is a ``Method`` (what registries hold and return); the
#: class methods that take a config (`Method.run_problems`) therefore take any `StrictModel`.
ConfigT = TypeVar("ConfigT", bound=StrictModel, default=StrictModel, covariant=True)


def parse_number(value: Any) -> Any:
    """Accept ``"8/255"`` style fractions (the way robustness papers write eps) besides plain numbers."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError, OverflowError):  # OverflowError: "1e400"
            return value  # pydantic reports the type error with the key path
    return value


#: A float that may be written as a fraction string in recipes, e.g. ``eps = "8/255"``.
Number = Annotated[float, BeforeValidator(parse_number)]


def introduced(default: Any, *, since: str, **field_kwargs: Any) -> Any:
    """A pydantic ``Field`` for an option added to an existing schema, whose default keeps the old behaviour.

    While a recipe leaves the option at ``default``, the option is left out of the recipe hash, so
    every run resolved before the option existed keeps its hash (and a finished run, teacher runs
    included, is still found after an upgrade). Any other value is hashed as usual. ``since`` names
    the kdbench version that added it (documentation only; ``kdbench show`` prints it).

    Use it only when ``default`` reproduces exactly what kdbench did before the option existed. A
    new option that changes behaviour, or a changed default, must be a plain ``Field``: then the
    hash changes, as it must (docs/recipes.md, "The recipe hash")::

        class PGDConfig(StrictModel):
            eps: Number = Field(8 / 255)
            step_schedule: list[float] | None = introduced(None, since="0.2", description="...")
    """
    extra = dict(field_kwargs.pop("json_schema_extra", None) or {})
    extra[HASH_NEUTRAL] = {"since": since, "default": to_jsonable_python(default)}
    return Field(default, json_schema_extra=extra, **field_kwargs)


def hash_payload(model: BaseModel) -> dict[str, Any]:
    """``model.model_dump(mode="json")`` without the `introduced` options that hold their default.

    Nested models (and lists of models) are treated the same way, so an option introduced inside a
    sub-table is neutral too. This is what the recipe hash is computed over; recipe.toml keeps the
    full dump.
    """
    dumped = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if name not in dumped:  # excluded from dumps
            continue
        value = getattr(model, name)
        extra = info.json_schema_extra
        marker = extra.get(HASH_NEUTRAL) if isinstance(extra, dict) else None
        if isinstance(marker, dict) and dumped[name] == marker.get("default"):
            continue
        if isinstance(value, BaseModel):
            out[name] = hash_payload(value)
        elif isinstance(value, list | tuple) and value and all(isinstance(v, BaseModel) for v in value):
            out[name] = [hash_payload(v) for v in value]
        else:
            out[name] = dumped[name]
    for key in dumped.keys() - out.keys() - set(type(model).model_fields):
        out[key] = dumped[key]  # extra keys of open tables
    return out
