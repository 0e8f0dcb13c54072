"""Building blocks for component configurations: strict pydantic models and CIFAR-style numbers.

Every registered component (model, dataset, attack, method) declares its options as a subclass of
`StrictModel`; recipes are validated against it, so a typo is an error and never a silent default.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

__all__ = ["EmptyConfig", "Number", "StrictModel", "parse_number"]


class StrictModel(BaseModel):
    """Frozen, extra keys forbidden, NaN and infinity rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True, strict=True)


class EmptyConfig(StrictModel):
    """A component without options."""


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
