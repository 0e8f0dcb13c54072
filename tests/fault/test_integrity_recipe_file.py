"""An empty or binary recipe.toml in a partial run folder (a crash of the editor, a disk error, a
stray ``> recipe.toml``) is rewritten with a warning, and the run resumes from its own checkpoints;
one that names another recipe is still refused."""

from __future__ import annotations

import pytest

from kdbench.cli import main
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from ..conftest import write
from .conftest import TINY_RECIPE, assert_same_run
from .test_checkpoints import _crash_after_two_epochs


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe\x89PNG\r\n\x1a\n" * 50], ids=["empty", "binary"])
def test_broken_recipe_file_in_a_partial_run_is_rewritten_and_the_run_resumes(tmp_path, monkeypatch, capsys, content):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    reference = run_recipe(load_recipe(recipe), tmp_path / "ref").out_dir
    out = tmp_path / "out"
    _crash_after_two_epochs(recipe, out, monkeypatch)
    (out / "recipe.toml").write_bytes(content)
    capsys.readouterr()

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"kdbench: warning: {out / 'recipe.toml'} is empty, unreadable or not kdbench's; rewriting it" in err
    assert (out / "recipe.toml").read_text() == (reference / "recipe.toml").read_text().replace(
        str(tmp_path / "ref"), str(out)
    )
    assert_same_run(out, reference)
