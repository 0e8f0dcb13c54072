"""Validating a table against a pydantic model with one-line `RecipeError`s that name the file and the key."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kdbench._errors import RecipeError, did_you_mean

#: A pydantic model class, for `_validate`.
_Model = TypeVar("_Model", bound=BaseModel)


def _validate(model: type[_Model], data: Any, file: str, prefix: str) -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _as_recipe_error(exc, model, file, prefix) from None


def _as_recipe_error(exc: ValidationError, model: type[BaseModel], file: str, prefix: str) -> RecipeError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        hint = did_you_mean(loc[-1], allowed) if allowed else "this table takes no keys here"
        return RecipeError(f"unknown key{more}", file=file, key=key, hint=hint)
    if kind == "missing":
        return RecipeError(f"required key is missing{more}", file=file, key=key, hint="add it")
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    given = first.get("input")
    shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
    if isinstance(given, str) and kind in ("float_type", "int_type", "bool_type"):
        # strict types: a quoted number is a string in TOML, never silently converted
        return RecipeError(f"{message}{shown}{more}", file=file, key=key, hint=f"write it without quotes: {given}")
    return RecipeError(f"{message}{shown}{more}", file=file, key=key)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the (nested) pydantic model at ``loc``, for did-you-mean hints."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))
