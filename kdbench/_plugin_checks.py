"""Validation of a component when it is registered or loaded, in the spirit of pluggy's hook checks.

pluggy refuses a plugin whose hook implementation does not match its specification at registration
time, not when the hook is first called. kdbench does the same for its components, so a plugin is
either fully usable or reported (with its distribution and version) and never half-used:

* ``Config`` is a pydantic model that is strict: unknown keys forbidden (``extra="forbid"``), NaN and
  infinity rejected (``allow_inf_nan=False``), and every field has a default (a recipe may omit any
  option). `kdbench.config.StrictModel` is all of this; a plain ``pydantic.BaseModel`` is not.
* The methods the interface requires are implemented (not inherited from the base class).
* Every class attribute the base class declares as ``ClassVar[...]`` still has that type, e.g. a
  method's ``needs_teacher`` is a bool and its ``attack_bn_mode`` is "train" or "eval".
"""

from __future__ import annotations

import typing
from typing import Any, ClassVar

from pydantic import BaseModel, TypeAdapter, ValidationError

__all__ = ["REQUIRED_METHODS", "component_problems"]

#: Methods each interface requires, by base-class name (the bases import this module's registry).
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "Method": ("loss",),
    "Attack": ("perturb",),
    "DatasetSource": ("info", "load"),
    "Network": ("features",),
}


def component_problems(cls: type, base: type) -> list[str]:
    """Everything wrong with component class ``cls`` (a subclass of ``base``); empty when it is valid."""
    problems = _config_problems(getattr(cls, "Config", None))
    for name in REQUIRED_METHODS.get(base.__name__, ()):
        if getattr(cls, name, None) is getattr(base, name, None):
            problems.append(f"does not implement {name}() (required by {base.__name__})")
    problems += _class_attribute_problems(cls, base)
    return problems


def _config_problems(config: Any) -> list[str]:
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return [f"Config is {config!r}, not a pydantic model (subclass kdbench.StrictModel)"]
    problems = []
    settings = config.model_config
    if settings.get("extra") != "forbid":
        problems.append("Config accepts unknown keys (set extra='forbid', or subclass kdbench.StrictModel)")
    if settings.get("allow_inf_nan", True):
        problems.append("Config accepts NaN and infinity (set allow_inf_nan=False, or subclass kdbench.StrictModel)")
    required = [name for name, field in config.model_fields.items() if field.is_required()]
    if required:
        problems.append(f"Config field(s) {', '.join(required)} have no default (every option needs one)")
    return problems


def _class_attribute_problems(cls: type, base: type) -> list[str]:
    try:
        hints = typing.get_type_hints(base)
    except Exception:  # an annotation that cannot be resolved: nothing to check against
        return []
    problems = []
    for name, hint in hints.items():
        if typing.get_origin(hint) is not ClassVar or name == "Config" or not typing.get_args(hint):
            continue
        value = getattr(cls, name, None)
        try:
            TypeAdapter(typing.get_args(hint)[0]).validate_python(value, strict=True)
        except ValidationError:
            expected = getattr(typing.get_args(hint)[0], "__name__", None) or str(typing.get_args(hint)[0])
            problems.append(f"class attribute {name} = {value!r} is not of type {expected.replace('typing.', '')}")
        except Exception:  # a type pydantic cannot check: leave it to the interface's own code
            continue
    return problems
