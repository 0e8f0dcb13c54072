"""`kdbench show NAME`: every option with its type as TOML writes it, its choices, default and description,
and the formula of the component's module docstring, for every registered kind (third-party plugins too)."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any, Literal

import pytest
from pydantic import Field

from kdbench._registry import registries
from kdbench.cli import main
from kdbench.config import Number, StrictModel, introduced
from kdbench.describe import format_options, formula_block, option_docs, toml_type, toml_value


def show(capsys: pytest.CaptureFixture[str], name: str) -> str:
    assert main(["show", name]) == 0
    return capsys.readouterr().out


ALL_COMPONENTS = [(reg.kind, name) for reg in registries().values() for name in reg.names()]


@pytest.mark.parametrize(("kind", "name"), ALL_COMPONENTS, ids=[f"{k}/{n}" for k, n in ALL_COMPONENTS])
def test_every_registered_component_lists_every_option(capsys, kind, name):
    out = show(capsys, f"{kind}/{name}")
    cls = registries()[kind].get(name)
    assert out.startswith(f"{kind[:-1]} {name}  (")
    fields = cls.Config.model_fields
    for key, info in fields.items():
        line = next((ln for ln in out.splitlines() if ln.startswith(f"  {key}: ")), None)
        assert line is not None, f"option {key} missing from `kdbench show {name}`:\n{out}"
        assert "(default " in line or "(required" in line, line
        if info.description:  # wrapped below the option: compare without line breaks
            assert " ".join(info.description.split()) in " ".join(out.split()), key
    options = out[out.index("\noptions") :]
    for python in ("Literal", "Optional", "typing.", "NoneType", "True", "False", "<class"):  # not TOML
        assert python not in options, f"{python!r} in `kdbench show {name}`:\n{out}"
    if not fields:
        assert "options: none" in out


def test_literal_choices_defaults_and_descriptions_of_a_method(capsys):
    out = show(capsys, "gacd")
    assert 'positives: "current" | "memory" (default "memory")' in out
    assert 'weight_source: "clean" | "adversarial" | "off" | "teacher_max" (default "clean")' in out
    assert 'attack_objective: "gacd" | "gacd_ce" | "ce" | "kl" (default "gacd_ce")' in out
    assert "  momentum: float in [0, 1) (default 0.5)" in out
    assert "  embed_dim: int > 0 (default 128)\n      dimension d of the embedding heads and memory banks\n" in out
    assert "  beta: float >= 0 (default 0.8)" in out  # a weight, not a pixel budget: never "204/255"
    assert 'options, in a recipe under [method] (next to name = "gacd"):' in out


def test_the_formula_block_of_the_module_docstring(capsys):
    out = show(capsys, "kd")
    assert "formula, from the docstring of kdbench_plugins.kd:" in out
    assert "arXiv:1503.02531" in out  # the citation paragraph above the formula
    assert "\n    loss = (1 - a) * CE(S(x), y) + a * T^2 * KL(softmax(z_T(x) / T) || softmax(z_S(x) / T))\n" in out
    out = show(capsys, "crd")
    block = out.split("formula, from the docstring of kdbench_plugins.crd:")[1].split("options")[0]
    assert "    CRD  = L_T + L_S" in block and "    loss = CE(S(x), y) + beta * CRD" in block
    assert "On the penultimate" not in block  # the paragraph after the citation is not the formula
    out = show(capsys, "pgd")  # attacks have one too
    assert "x'_{t+1} = clip_[0,1](proj_{B(x)}" in out


def test_budgets_and_fractions_are_written_as_recipes_write_them(capsys):
    out = show(capsys, "pgd")
    assert '  eps: float >= 0 (default "8/255")' in out
    assert '  norm: "linf" | "l2" (default "linf")' in out
    out = show(capsys, "rslad")
    assert '  adv_weight: float >= 0 (default "5/6")' in out
    assert 'training-attack defaults: random_start = "normal"' in out


def test_models_and_datasets_with_nested_and_optional_types(capsys):
    out = show(capsys, "imagefolder")
    assert "  image_size: int > 0 | None (default not set)" in out
    assert "  mean: [float, float, float] (default [0.5, 0.5, 0.5])" in out
    assert "options, in a recipe under [data.options]:" in out
    assert "formula" not in out  # a module without a literal block has no formula (bullets are not one)
    out = show(capsys, "timm")
    assert "  pretrained: bool (default false)" in out
    assert "  drop_rate: float in [0.0, 1.0) (default 0.0)" in out
    out = show(capsys, "fake")
    assert "  train_size: int in (0, 10_000_000] (default 512)" in out


@pytest.mark.skipif(
    "kdbench-example-plugin" not in {d.metadata["Name"] for d in metadata.distributions()},
    reason="pip install --no-deps --no-build-isolation -e examples/kdbench-example-plugin",
)
def test_a_third_party_plugin(capsys):
    out = show(capsys, "feature_mse")
    assert out.startswith("method feature_mse  (kdbench-example-plugin 0.1.0, kdbench_example_plugin:FeatureMSE)")
    assert "  adversarial: bool (default false)\n      match features of x' (training attack) instead of x" in out
    assert "    loss = w_ce * CE(z_S(x_s), y) + w_feat * mean_b mean_d (W f_S(x_s) + b - f_T(x))_d^2" in out


@pytest.mark.parametrize(
    ("name", "start", "match"),
    [
        ("gacdd", "no component named 'gacdd'", "did you mean 'gacd'"),
        ("resnet1", "no component named 'resnet1'", "'resnet18'"),
        ("methods/kdd", "no method named 'kdd'", "did you mean 'kd'"),
        ("models/kd", "no model named 'kd'", "('kd' is a method: kdbench show method/kd)"),
    ],
)
def test_an_unknown_name_is_one_line_with_close_matches(capsys, name, start, match):
    assert main(["show", name]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"kdbench: error: {start}; ") and match in err, err


# ------------------------------------------------------------------------------- types, in isolation


class Step(StrictModel):
    epoch: int = Field(0, ge=0, description="first epoch of this step")
    eps: Number = 8 / 255


class Schedule(StrictModel):
    start: float = Field(0.5, gt=0, le=1, description="initial value")
    kind: Literal["linear", "cosine"] = "cosine"


class Nested(StrictModel):
    schedule: Schedule = Field(default_factory=Schedule, description="a sub-table")
    steps: list[Step] = Field(default_factory=lambda: [Step()], description="an array of tables")
    weights: dict[str, float] = Field(default_factory=dict)
    names: list[str] = Field(default_factory=lambda: ["a"])
    size: Annotated[int, Field(gt=0)] | None = None
    mode: Literal[1, 2] | None = 1
    flag: bool = introduced(False, since="0.2", description="new in 0.2")
    must: int


@pytest.mark.parametrize(
    ("annotation", "text"),
    [
        (float, "float"),
        (int | None, "int | None"),
        (None | int, "int | None"),
        (Literal["current", "memory"], '"current" | "memory"'),
        (Literal[True, False], "true | false"),
        (tuple[float, float, float], "[float, float, float]"),
        (tuple[int, ...], "[int, ...]"),
        (list[Literal["a", "b"]], '["a" | "b", ...]'),
        (dict[str, float], "{str = float, ...}"),
        (Annotated[float, Field(ge=0, lt=1)], "float in [0, 1)"),
        (Any, "any value"),
        (Schedule, "table"),
    ],
)
def test_toml_type(annotation, text):
    assert toml_type(annotation) == text


def test_nested_tables_are_expanded_under_dotted_keys():
    lines = format_options(list(option_docs(Nested)))
    text = "\n".join(lines)
    assert "  schedule: table (see below)\n      a sub-table" in text
    assert "  schedule.start: float in (0, 1] (default 0.5)\n      initial value" in text
    assert '  schedule.kind: "linear" | "cosine" (default "cosine")' in text
    assert '  steps: [table, ...] (default [{epoch = 0, eps = "8/255"}])\n      an array of tables' in text
    assert "  steps[].epoch: int >= 0 (default 0)" in text
    assert '  steps[].eps: float (default "8/255")' in text
    assert "  weights: {str = float, ...} (default {})" in text
    assert '  names: [str, ...] (default ["a"])' in text
    assert "  size: int > 0 | None (default not set)" in text
    assert "  mode: 1 | 2 | None (default 1)" in text
    assert "  flag: bool (default false, added in 0.2)" in text
    assert "  must: int (required)" in text


def test_toml_values():
    assert toml_value(8 / 255, fraction=True) == '"8/255"'
    assert toml_value(5 / 6, fraction=True) == '"5/6"'
    assert toml_value(0.8, fraction=True) == "0.8"  # short decimals stay decimals
    assert toml_value(0.8) == "0.8"
    assert toml_value(1.0, fraction=True) == "1.0"
    assert toml_value(None) == "not set"
    assert toml_value((0.5, "x", True)) == '[0.5, "x", true]'


def test_formula_block_takes_only_a_literal_block():
    doc = (
        "Title.\n\nA list:\n- item one\n    continued\n\nThe loss::\n\n    loss = a + b\n      + c\n\n    more\n\nEnd."
    )
    assert formula_block(doc) == "loss = a + b\n  + c\n\nmore"
    assert formula_block("Just text.\n\nNo block.") is None
    assert formula_block(None) is None
