"""Published numbers beside kdbench's measured ones, never mixed with them.

A published-results file (TOML; the shipped one is benchmarks/published.toml) lists numbers from papers,
official READMEs and RobustBench's model info, each with its source::

    [[result]]
    method = "trades"                  # what produced the network (a teacher-training method, or a KD method)
    teacher = ""                        # the teacher of a distilled student ("" for none)
    student = "wrn_34_10"               # the network the numbers are of
    dataset = "cifar10"
    norm = "Linf"
    eps = "8/255"
    clean = 0.8492
    autoattack = 0.5308
    sources = {clean = "RobustBench README ...", autoattack = "RobustBench README ..."}
    unverified = []                     # metrics whose number could not be checked against its source
    note = "..."

`kdbench leaderboard --published FILE` prints them after the measured boards, in their own tables whose
rows are marked ``published``; they are never ranked with, averaged into or grouped with measured runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from kdbench import _toml
from kdbench._errors import RecipeError, UserError
from kdbench.config import StrictModel

__all__ = ["PUBLISHED_METRICS", "PublishedResult", "load_published", "published_to_dict", "render_published"]

#: The columns a published row may fill (accuracies as fractions in [0, 1]).
PUBLISHED_METRICS = ("clean", "fgsm", "pgd20", "cw", "autoattack")
_LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw": "CW", "autoattack": "AutoAttack"}


class PublishedResult(StrictModel):
    """One published row; every number it gives names its source."""

    method: str
    teacher: str = ""
    student: str
    dataset: str
    norm: str = "Linf"
    eps: str = "8/255"
    clean: float | None = Field(None, ge=0, le=1)
    fgsm: float | None = Field(None, ge=0, le=1)
    pgd20: float | None = Field(None, ge=0, le=1)
    cw: float | None = Field(None, ge=0, le=1)
    autoattack: float | None = Field(None, ge=0, le=1)
    sources: dict[str, str]
    unverified: list[str] = Field(default_factory=list)
    note: str = ""

    @model_validator(mode="after")
    def _every_number_has_a_source(self) -> PublishedResult:
        given = [m for m in PUBLISHED_METRICS if getattr(self, m) is not None]
        if not given:
            raise ValueError("gives no number (clean, fgsm, pgd20, cw, autoattack)")
        missing = [m for m in given if not self.sources.get(m, "").strip()]
        if missing:
            raise ValueError(f"no source for {', '.join(missing)}: add sources.{missing[0]} or leave the number out")
        unknown = [m for m in [*self.sources, *self.unverified] if m not in PUBLISHED_METRICS]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r} (choices: {', '.join(PUBLISHED_METRICS)})")
        return self

    def setting(self) -> tuple[str, str, str, str, str]:
        return (self.dataset, self.norm, self.eps, self.teacher, self.student)


def load_published(path: Path) -> list[PublishedResult]:
    """The rows of a published-results file; a bad row is a one-line error naming ``result[i].key``."""
    if not path.is_file():
        raise UserError(f"--published: {path} not found (the shipped file is benchmarks/published.toml)")
    raw = _toml.load_file(path)
    rows = raw.get("result", [])
    if not isinstance(rows, list) or not rows:
        raise RecipeError("no [[result]] tables", file=str(path), key="result")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(PublishedResult.model_validate(row))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            key = f"result[{i}]" + (f".{loc}" if loc else "")
            raise RecipeError(first["msg"].removeprefix("Value error, "), file=str(path), key=key) from None
    return out


def _pct(value: float | None, metric: str, row: PublishedResult) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" + ("?" if metric in row.unverified else "")


def _groups(rows: Sequence[PublishedResult]) -> dict[tuple[str, str, str, str, str], list[PublishedResult]]:
    groups: dict[tuple[str, str, str, str, str], list[PublishedResult]] = {}
    for row in rows:
        groups.setdefault(row.setting(), []).append(row)
    return dict(sorted(groups.items()))


def render_published(rows: Sequence[PublishedResult], *, markdown: bool = False) -> str:
    """Tables of published rows, one per setting, each row marked ``published`` (``?``: unverified)."""
    heads = ["", "method", *(f"{_LABELS[m]} %" for m in PUBLISHED_METRICS), "source"]
    blocks = []
    for (dataset, norm, eps, teacher, student), group in _groups(rows).items():
        who = f"teacher {teacher}" if teacher else "no teacher"
        title = f"published, not measured by kdbench: {dataset} · {norm} eps {eps} · {who} · student {student}"
        table = [
            ["published", r.method, *(_pct(getattr(r, m), m, r) for m in PUBLISHED_METRICS), _source(r)] for r in group
        ]
        notes = [f"{r.method}: {r.note}" for r in group if r.note]
        if markdown:
            lines = [f"### {title}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table]
            lines += [""] + [f"- {n}" for n in notes]
        else:
            widths = [max(len(r[i]) for r in [heads, *table]) for i in range(len(heads))]
            lines = [title, "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
            lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
            lines += [f"  {n}" for n in notes]
        blocks.append("\n".join(lines))
    legend = "(? = number not verified against its source; published rows are never ranked with measured ones)"
    return "\n\n".join(blocks) + "\n" + legend + "\n"


def _source(row: PublishedResult) -> str:
    distinct = list(dict.fromkeys(row.sources.values()))
    return "; ".join(distinct)


def published_to_dict(rows: Sequence[PublishedResult]) -> list[dict[str, Any]]:
    return [{"kind": "published", **r.model_dump(mode="json")} for r in rows]
