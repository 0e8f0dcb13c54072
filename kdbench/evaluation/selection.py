"""Which test images a run is evaluated on: one fixed rule per dataset, recorded with a fingerprint.

Robust accuracy depends on the images: the same weights score 63.8 % clean on the first 1,000 images
of an ImageFolder copy of CIFAR-10 (all airplanes: files are decoded class by class) and 29.4 % on a
class-balanced 500. So the evaluation set never depends on how a source happens to order its files,
nor on the recipe's seed:

* ``first-n``: a source whose test split has a canonical order (torchvision's CIFAR-10/-100 files,
  already shuffled by their authors) is evaluated on its first N images, as RobustBench does
  (Croce et al., "RobustBench", NeurIPS Datasets and Benchmarks 2021);
* ``stratified``: any other source (an ImageFolder tree, the offline JPEG copy of CIFAR-10, STL-10,
  synthetic data) is evaluated on ``balanced_subset(labels, N, seed=SELECTION_SEED)``: classes filled
  round-robin from one fixed shuffle, so every class gets N // C images (the lowest class ids one
  more) and a larger N contains every image of a smaller one;
* ``all``: N not given, the whole test split;
* ``explicit``: ``eval.examples`` lists the indices (positions in the test split in the source's
  decode order), inline or as a file (see `read_examples`); ``eval.n_examples`` then takes the first N
  of that list.

The rule, N, the images per class and three sha256 fingerprints are stored in result.json and
eval.json (``evaluation.selection``): of the decoded test split (pixels and labels: "the data files",
independent of where they live), of the index list in evaluation order, and of the evaluation set
(split fingerprint + sorted indices), the key the leaderboard groups by.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdbench._errors import UserError
from kdbench.data.base import DatasetSource
from kdbench.data.loader import balanced_subset

__all__ = [
    "SELECTION_SEED",
    "EvalSelection",
    "SelectionError",
    "has_canonical_order",
    "read_examples",
    "select_examples",
    "split_fingerprint",
]

#: Seed of the stratified order: one constant for every run of every dataset, never the recipe's seed.
SELECTION_SEED = 0


class SelectionError(UserError):
    """A bad evaluation selection: ``KEY: problem; hint`` (a recipe turns it into a `RecipeError` at KEY)."""

    def __init__(self, key: str, problem: str, hint: str | None = None):
        self.key, self.problem, self.hint = key, problem, hint
        super().__init__(f"{key}: {problem}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class EvalSelection:
    """The evaluated images: ``indices: int64 (N,)`` into the test split, in evaluation order."""

    indices: Tensor
    rule: str  # "first-n" | "stratified" | "explicit" | "all"
    split_size: int
    per_class: tuple[int, ...]  # evaluated images of class 0, 1, ..., C - 1
    split_sha256: str
    indices_sha256: str
    eval_set_sha256: str

    @property
    def n(self) -> int:
        return int(self.indices.numel())

    @property
    def classes_covered(self) -> int:
        return sum(1 for count in self.per_class if count > 0)

    def to_dict(self) -> dict[str, Any]:
        """result.json's ``evaluation.selection``."""
        return {
            "rule": self.rule,
            "seed": SELECTION_SEED if self.rule == "stratified" else None,
            "n": self.n,
            "split_size": self.split_size,
            "num_classes": len(self.per_class),
            "classes_covered": self.classes_covered,
            "per_class": list(self.per_class),
            "split_sha256": self.split_sha256,
            "indices_sha256": self.indices_sha256,
            "eval_set_sha256": self.eval_set_sha256,
        }


def has_canonical_order(source: DatasetSource) -> bool:
    """Whether ``source``'s test split comes in a canonical order (its ``canonical_test_order()``)."""
    method = getattr(source, "canonical_test_order", None)
    return bool(method()) if callable(method) else False


def split_fingerprint(images: Tensor, labels: Tensor) -> str:
    """sha256 of a decoded split: its shape, its uint8 pixels and its int64 labels, in decode order."""
    digest = hashlib.sha256()
    digest.update(f"{tuple(images.shape)} {images.dtype}\n".encode())
    digest.update(images.detach().cpu().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _indices_digest(indices: Sequence[int]) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in indices).encode()).hexdigest()


def read_examples(value: str | Sequence[int], base: Path | None, *, what: str) -> list[int]:
    """The index list of ``eval.examples``: given inline, or a file path (relative to ``base``).

    A file holds either a JSON list of integers (``.json``) or integers separated by whitespace or
    commas, ``#`` starting a comment (any other name). ``what`` names the key in error messages.
    """
    if not isinstance(value, str):
        return [int(i) for i in value]
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SelectionError(what, f"cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        if path.suffix == ".json":
            items = json.loads(text)
            if not isinstance(items, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
                raise ValueError("not a JSON list of integers")
            return list(items)
        tokens = " ".join(line.split("#", 1)[0] for line in text.splitlines()).replace(",", " ").split()
        return [int(token) for token in tokens]
    except ValueError as exc:
        raise SelectionError(what, f"{path} is not a list of integer indices ({exc})") from None


def _check_examples(indices: list[int], split_size: int, what: str) -> None:
    if not indices:
        raise SelectionError(what, "the selection is empty", "list at least one test index")
    bad = [i for i in indices if not 0 <= i < split_size]
    if bad:
        raise SelectionError(
            what,
            f"index {bad[0]} out of range for a test split of {split_size} images ({len(bad)} such indices)",
            f"use 0 .. {split_size - 1}",
        )
    seen: set[int] = set()
    for i in indices:
        if i in seen:
            raise SelectionError(what, f"index {i} is listed twice", "each test image may be evaluated once")
        seen.add(i)


def select_examples(
    images: Tensor,
    labels: Tensor,
    *,
    canonical: bool,
    n: int | None,
    examples: Sequence[int] | None = None,
    num_classes: int | None = None,
    n_key: str = "eval.n_examples",
    examples_key: str = "eval.examples",
) -> EvalSelection:
    """The evaluation set of a test split ``images: uint8 (M, C, H, W)``, ``labels: (M,)`` (see the module doc).

    ``n``: how many images (None: all, or all of ``examples``); ``examples``: an explicit index list.
    Bad input (N above the split or the selection, indices out of range or repeated) is a one-line
    `SelectionError` (a `UserError`) naming ``n_key`` / ``examples_key``.
    """
    labels = labels.detach().cpu().to(torch.int64)
    total = len(labels)
    if n is not None and n < 1:
        raise SelectionError(n_key, f"must be at least 1, got {n}")
    if examples is not None:
        listed = [int(i) for i in examples]
        _check_examples(listed, total, examples_key)
        if n is not None and n > len(listed):
            raise SelectionError(
                n_key,
                f"asks for {n} evaluation images but {examples_key} lists {len(listed)}",
                f"use at most {len(listed)}",
            )
        indices = torch.tensor(listed[:n] if n is not None else listed, dtype=torch.int64)
        rule = "explicit"
    elif n is not None and n > total:
        raise SelectionError(
            n_key, f"asks for {n} evaluation images but the test set has {total}", f"use at most {total}"
        )
    elif n is None or n == total:
        indices, rule = torch.arange(total), "all"
    elif canonical:
        indices, rule = torch.arange(n), "first-n"
    else:
        indices, rule = balanced_subset(labels, n, seed=SELECTION_SEED), "stratified"
    classes = max(num_classes or 0, int(labels.max()) + 1 if total else 0)
    per_class = torch.bincount(labels[indices], minlength=classes)
    split_sha = split_fingerprint(images, labels)
    ordered = indices.tolist()
    eval_set = hashlib.sha256(f"{split_sha}\n{_indices_digest(sorted(ordered))}".encode()).hexdigest()
    return EvalSelection(
        indices=indices,
        rule=rule,
        split_size=total,
        per_class=tuple(int(c) for c in per_class),
        split_sha256=split_sha,
        indices_sha256=_indices_digest(ordered),
        eval_set_sha256=eval_set,
    )
