"""Input normalisation as part of a model's configuration.

Every kdbench network takes images in [0, 1] and normalises them inside itself,
``x_n = (x - mean) / std`` per channel (`kdbench.models.base.Normalize`), so attacks work in pixel space.
Which ``mean``/``std`` it uses is the recipe's choice:

* ``normalize = "dataset"`` (the default): the dataset's channel statistics, as RepDistiller (KD, CRD)
  normalises in its data pipeline;
* ``normalize = "none"``: ``mean = 0``, ``std = 1``, so the raw [0, 1] pixels go straight into the first
  convolution, as in the official ARD, RSLAD, TRADES, IAD and MTARD code (``ToTensor()`` and no
  ``Normalize``). Their checkpoints (TRADES' ``model_cifar_wrn.pt``, the ARD/RSLAD students) compute the
  official function only with this setting; ``(x - 0) / 1 == x`` exactly in floating point;
* ``normalize = {mean = [...], std = [...]}``: explicit statistics, e.g. RSLAD/MTARD's CIFAR-100
  WRN-70-16, which was trained with CIFAR-10's.

The resolved statistics are recorded in model.pt (key ``normalize``) and result.json; a kdbench weights
file whose recorded statistics differ from the recipe's is refused (`check_recorded`) rather than loaded
into a network that would compute a different function.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from kdbench._errors import RecipeError
from kdbench.config import StrictModel

__all__ = [
    "DEFAULT_NORMALIZE",
    "Normalization",
    "NormalizeSetting",
    "NormalizeStats",
    "check_recorded",
    "recorded_normalization",
    "resolve_normalization",
]


class NormalizeStats(StrictModel):
    """Explicit per-channel statistics: ``normalize = {mean = [0.5071, 0.4865, 0.4409], std = [...]}``."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> NormalizeStats:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("every std must be positive")
        return self


#: What a recipe may write for ``student.normalize`` / ``teacher.normalize``.
NormalizeSetting = Literal["dataset", "none"] | NormalizeStats
#: The behaviour of every kdbench release before the setting existed.
DEFAULT_NORMALIZE: NormalizeSetting = "dataset"


class Normalization(StrictModel):
    """Resolved statistics, as recorded in model.pt and result.json."""

    setting: Literal["dataset", "none", "explicit"]
    mean: list[float]
    std: list[float]

    @property
    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.mean), tuple(self.std)

    def describe(self) -> str:
        if self.setting == "none":
            return '"none" (raw [0, 1] pixels)'
        return f'"{self.setting}" (mean {_short(self.mean)}, std {_short(self.std)})'

    def same_function(self, other: Normalization) -> bool:
        """Whether both normalise identically (to float32 precision, as the buffers hold them)."""
        pairs = [*zip(self.mean, other.mean, strict=False), *zip(self.std, other.std, strict=False)]
        return (
            len(self.mean) == len(other.mean)
            and len(self.std) == len(other.std)
            and all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in pairs)
        )


def resolve_normalization(
    setting: NormalizeSetting | None, mean: tuple[float, ...], std: tuple[float, ...]
) -> Normalization:
    """The statistics ``setting`` stands for, given the dataset's ``mean``/``std`` (None means "dataset")."""
    if setting is None or setting == "dataset":
        return Normalization(setting="dataset", mean=list(mean), std=list(std))
    if setting == "none":
        return Normalization(setting="none", mean=[0.0] * len(mean), std=[1.0] * len(std))
    assert isinstance(setting, NormalizeStats)
    return Normalization(setting="explicit", mean=list(setting.mean), std=list(setting.std))


def recorded_normalization(
    meta: dict[str, Any], dataset_mean: tuple[float, ...], dataset_std: tuple[float, ...]
) -> Normalization | None:
    """The normalisation a kdbench model file records; files written before the key existed used the
    dataset's statistics (the only behaviour then). Returns None for files without kdbench metadata."""
    if "normalize" in meta and isinstance(meta["normalize"], dict):
        return Normalization.model_validate(meta["normalize"])
    if "model" in meta:  # a kdbench model.pt of an older release
        return Normalization(setting="dataset", mean=list(dataset_mean), std=list(dataset_std))
    return None


def check_recorded(recorded: Normalization | None, expected: Normalization, *, file: str, key: str, what: str) -> None:
    """Refuse weights trained under another normalisation than the recipe's (a bare state_dict records
    none, so the recipe's setting is taken as given: that is how official checkpoints are loaded)."""
    if recorded is None or recorded.same_function(expected):
        return
    setting = (
        f"{{mean = {recorded.mean}, std = {recorded.std}}}"
        if recorded.setting == "explicit"
        else (f'"{recorded.setting}"')
    )
    raise RecipeError(
        f"{what} was trained with normalize = {recorded.describe()} but the recipe asks for {expected.describe()}",
        file=file,
        key=key,
        hint=f"set {key} = {setting} (or remove the key if that is the default)",
    )


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
