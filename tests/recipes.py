"""The tiny recipe the tests train: fake data, a ResNet-8, one epoch, the clean accuracy.

``tiny_recipe(name)`` is the TOML text most tests start from; keyword arguments change one part, and the
``*_extra`` ones add lines to a table (TOML text, one key per line). The text keeps the shape tests edit
with ``str.replace`` (``epochs = 1``, ``name = "natural"``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence


def tiny_recipe(
    name: str = "tiny",
    *,
    method: str = "natural",
    seed: int | None = 0,
    train_size: int = 64,
    test_size: int = 32,
    image_size: int = 16,
    data_options: str = "",
    teacher: str = "",
    student: str = "resnet8",
    student_extra: str = "",
    method_extra: str = "",
    attack: str = "",
    epochs: int = 1,
    batch_size: int = 32,
    train_extra: str = "",
    attacks: Sequence[str] = ("clean",),
    eval_extra: str = "",
) -> str:
    """A runnable recipe on ``fake`` data. ``teacher``: its table(s), e.g. ``'[teacher]\\nrecipe = "t.toml"'``;
    ``attack``: an ``[attack]`` table's lines (the table is written only when given); ``data_options``:
    more fake-data options, e.g. ``"num_classes = 5"``."""
    options = f"train_size = {train_size}, test_size = {test_size}, image_size = {image_size}"
    if data_options:
        options += f", {data_options}"
    listed = ", ".join(f'"{a}"' for a in attacks)
    parts = [
        f'name = "{name}"',
        f"seed = {seed}" if seed is not None else "",
        "[data]",
        'dataset = "fake"',
        f"options = {{{options}}}",
        teacher,
        "[student]",
        f'model = "{student}"',
        student_extra,
        "[method]",
        f'name = "{method}"',
        method_extra,
        f"[attack]\n{attack}" if attack else "",
        "[train]",
        f"epochs = {epochs}",
        f"batch_size = {batch_size}",
        train_extra,
        "[eval]",
        f"attacks = [{listed}]",
        eval_extra,
    ]
    return "\n".join(part.strip("\n") for part in parts if part) + "\n"
