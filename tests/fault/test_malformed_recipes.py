"""Malformed recipes: each is rejected fast, in one line, with the file, the dotted key path and what to do.

The fixtures in tests/fault/recipes/ state their own expectation on their first line::

    # expect: KEY | PROBLEM | SUGGESTION        (rejected by `kdbench validate`)
    # expect-run: KEY | PROBLEM | SUGGESTION    (valid on paper, rejected by `kdbench run` before training)

``KEY`` is the dotted key path (``-`` for file-level problems, which name the line instead). Then a
property-based test feeds random mutations of a valid recipe to `kdbench.recipe.resolve`, which must
answer with a `RecipeError` or a resolved recipe, never any other exception.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdbench import MODELS, NetworkSpec, RecipeError
from kdbench.cli import main
from kdbench.recipe import resolve

from ..conftest import REPO, write
from .conftest import TINY_RECIPE

RECIPES = Path(__file__).with_name("recipes")
_HEADER = re.compile(r"^# (expect|expect-run): (.*)$")


def _expectation(path: Path) -> tuple[str, str, str, str, Path]:
    """(kind, key, problem, suggestion, file the error names: the fixture unless a 4th field says)."""
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    match = _HEADER.match(first)
    assert match, f"{path} has no '# expect:' first line"
    key, problem, suggestion, *named = (part.strip() for part in match.group(2).split("|"))
    return match.group(1), key, problem, suggestion, path.with_name(named[0]) if named else path


FIXTURES = sorted(RECIPES.glob("*.toml"))
STATIC = [p for p in FIXTURES if _expectation(p)[0] == "expect"]
RUNTIME = [p for p in FIXTURES if _expectation(p)[0] == "expect-run"]


@pytest.fixture(scope="module")
def warm() -> None:
    """Import every component once, so the timings below measure validation, not first imports."""
    assert main(["validate", str(REPO / "recipes" / "quickstart.toml")]) == 0


def test_there_are_enough_fixtures():
    assert len(STATIC) + len(RUNTIME) >= 15
    assert {p.stem for p in RUNTIME} == {"class_mismatch", "n_examples_too_large"}


def _check_line(err: str, path: Path, key: str, problem: str, suggestion: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err  # exactly one line
    line = err.rstrip("\n")
    prefix = f"kdbench: error: {path}: " + ("" if key == "-" else f"{key}: ")
    assert line.startswith(prefix), line
    assert problem in line, line
    assert suggestion in line, line


@pytest.mark.parametrize("path", STATIC, ids=[p.stem for p in STATIC])
def test_malformed_recipe_is_rejected_in_one_line(path, capsys, warm):
    _, key, problem, suggestion, named = _expectation(path)
    capsys.readouterr()
    tic = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    elapsed = time.perf_counter() - tic
    _check_line(capsys.readouterr().err, named, key, problem, suggestion)
    assert elapsed < 1.0


def test_a_folder_instead_of_a_file(tmp_path, capsys, warm):
    folder = tmp_path / "recipe.toml"
    folder.mkdir()
    assert main(["validate", str(folder)]) == 2
    _check_line(
        capsys.readouterr().err, folder, "-", "cannot read file (Is a directory)", "give the path of a readable .toml"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file(tmp_path, capsys, warm):
    path = write(tmp_path / "secret.toml", 'name = "x"\n')
    path.chmod(0)
    assert main(["validate", str(path)]) == 2
    _check_line(capsys.readouterr().err, path, "-", "cannot read file (Permission denied)", "readable .toml")


def test_validate_from_a_shell_reports_every_fixture_without_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "kdbench", "validate", *map(str, STATIC)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == len(STATIC)
    assert all(line.startswith("kdbench: error: ") for line in lines)
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ run-time checks


def _teacher_with_5_classes(path: Path) -> None:
    """A kdbench model file of a ResNet-8 with 5 classes (untrained: only its label space matters)."""
    cls = MODELS.get("resnet8")
    net = cls(NetworkSpec(5, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), cls.Config(), None)
    torch.save({"format": 1, "model": "resnet8", "options": {}, "num_classes": 5, "state_dict": net.state_dict()}, path)


@pytest.mark.parametrize("fixture", RUNTIME, ids=[p.stem for p in RUNTIME])
def test_run_time_problems_stop_the_run_before_training(fixture, tmp_path, capsys):
    path = tmp_path / fixture.name
    shutil.copy(fixture, path)
    _teacher_with_5_classes(tmp_path / "teacher-5-classes.pt")
    assert main(["validate", str(path)]) == 0  # nothing wrong on paper
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    _, key, problem, suggestion, _ = _expectation(path)
    _check_line(capsys.readouterr().err, path, key, problem, suggestion)
    assert not (out / "checkpoints").exists()
    assert not (out / "metrics.jsonl").exists()


# ------------------------------------------------------------------------ formerly known gaps

VALID = tomllib.loads(TINY_RECIPE)


def test_evaluation_eps_above_one_is_rejected():
    raw = copy.deepcopy(VALID)
    raw["eval"]["eps"] = 8.0
    with pytest.raises(RecipeError, match=r"eval\.eps"):
        resolve(raw)


def test_nul_byte_in_a_teacher_recipe_path_is_a_recipe_error(tmp_path):
    raw = copy.deepcopy(VALID)
    raw["method"]["name"] = "kd"
    raw["teacher"] = {"recipe": "teacher\x00.toml"}
    with pytest.raises(RecipeError, match=r"teacher\.recipe"):
        resolve(raw, path=tmp_path / "r.toml")


# ----------------------------------------------------------------------------------- property-based

#: Strings that mean something to the schema: registered names, fractions, paths, numbers as text.
MEANINGFUL = [
    "kd", "natural", "pgd_at", "trades", "resnet8", "timm:resnet18", "fake", "cifar10", "imagefolder", "pgd",
    "fgsm", "cw", "clean", "pgd20", "pgd0", "autoattack", "8/255", "1/0", "1e400", "-1", "nan", "inf", "", ":",
    ".", "/", "..", "teacher.toml", "cuda", "cpu", "bf16", "cosine", "linf", "l2",
]  # fmt: skip
SCHEMA_KEYS = [
    "name", "seed", "data", "student", "teacher", "method", "attack", "train", "eval", "dataset", "options", "model",
    "checkpoint", "recipe", "epochs", "batch_size", "lr", "eps", "norm", "attacks", "n_examples", "temperature",
    "alpha", "steps", "step_size", "random_start", "image_size", "num_classes", "train_size", "sweep", "extends",
]  # fmt: skip

_text = st.text(max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _text
    | st.sampled_from(MEANINGFUL)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_text | st.sampled_from(SCHEMA_KEYS), children, max_size=3)
    ),
    max_leaves=6,
)


def _key_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a nested dict (list items included)."""
    paths: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        paths.append((*prefix, key))
        paths.extend(_key_paths(value, (*prefix, key)))
    return paths


def _parent(raw: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = raw
    for key in path[:-1]:
        node = node[key]
    return node


@st.composite
def mutated_recipes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid recipe after 1-4 random edits: delete a key, replace a value (any type), add a key anywhere."""
    raw = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = _key_paths(raw)
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action != "add" and paths:
            path = draw(st.sampled_from(paths))
            parent = _parent(raw, path)
            if action == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(_values)
        else:
            tables = [()] + [p for p in paths if isinstance(_parent(raw, (*p, None)), dict)]
            table = _parent(raw, (*draw(st.sampled_from(tables)), None))
            table[draw(st.sampled_from(SCHEMA_KEYS) | _text)] = draw(_values)
    return raw


@settings(
    max_examples=200,
    deadline=2000,  # ms per example; resolving takes a few ms
    derandomize=True,  # the same 200 examples on every run: CI is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(raw=mutated_recipes())
def test_random_mutations_raise_only_recipe_errors(raw, tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "mutations"  # relative teacher paths resolve in here
    folder.mkdir(exist_ok=True)
    try:
        resolved = resolve(raw, path=folder / "mutated.toml")
    except RecipeError:
        return  # anything else fails the test, with hypothesis's smallest failing recipe
    assert all(math.isfinite(v) for v in _floats(resolved.to_dict()))


def _floats(node: Any) -> list[float]:
    if isinstance(node, float):
        return [node]
    if isinstance(node, dict):
        return [f for v in node.values() for f in _floats(v)]
    if isinstance(node, list):
        return [f for v in node for f in _floats(v)]
    return []
