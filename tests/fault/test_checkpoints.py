"""Damaged and hostile checkpoints, through real runs; and ``kdbench export`` to safetensors.

* A truncated or bit-flipped newest checkpoint fails its checksum: the run resumes from the previous
  one with a warning and ends bitwise like an uninterrupted run.
* A pickle that would run code (a ``__reduce__`` payload that creates a folder) is never executed:
  not as a training checkpoint with a valid checksum, not as teacher.checkpoint (file or run
  folder), not through ``kdbench export`` or ``kdbench eval``. Each case says why it refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kdbench.cli import main
from kdbench.engine.trainer import Trainer
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from ..conftest import write
from .conftest import TINY_RECIPE, assert_same_run, weights

SAFE_LOAD_REFUSAL = (
    "cannot be loaded safely (UnpicklingError); kdbench reads only weights (torch.load weights_only=True)"
)


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for arbitrary code in a hostile file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.marker,))


def _hostile_bytes(marker: Path, like: str) -> bytes:
    """A torch file shaped like a training checkpoint or a model.pt, carrying the payload."""
    if like == "checkpoint":
        obj = {"format": 1, "epoch": 2, "batch": 0, "student": {"conv.weight": _Payload(marker)}}
    else:
        obj = {"format": 1, "model": "resnet8", "num_classes": 10, "state_dict": {"w": _Payload(marker)}}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _tiny(tmp_path: Path, text: str = TINY_RECIPE, name: str = "tiny.toml") -> Path:
    return write(tmp_path / name, text)


def _crash_after_two_epochs(recipe: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run until checkpoints e1 and e2 exist, then crash (as test_engine does) and restore the trainer."""
    original = Trainer._run_epoch

    def crash_in_third_epoch(self: Trainer, epoch: int, start_batch: int) -> None:
        if epoch == 2:
            raise RuntimeError("simulated crash")
        original(self, epoch, start_batch)

    monkeypatch.setattr(Trainer, "_run_epoch", crash_in_third_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(load_recipe(recipe), out)
    monkeypatch.setattr(Trainer, "_run_epoch", original)
    names = sorted(p.name for p in (out / "checkpoints").glob("*.pt"))
    assert names == ["ckpt-e0001-b000000.pt", "ckpt-e0002-b000000.pt"]


def test_the_payload_is_live(tmp_path):
    """Guard for the tests below: loaded the unsafe way, the hostile file really runs its code."""
    marker = tmp_path / "control"
    torch.load(io.BytesIO(_hostile_bytes(marker, "model")), weights_only=False)
    assert marker.is_dir()


# -------------------------------------------------------------------------------- training checkpoints


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, damage):
    recipe = _tiny(tmp_path)
    reference = run_recipe(load_recipe(recipe), tmp_path / "ref").out_dir
    out = tmp_path / "out"
    _crash_after_two_epochs(recipe, out, monkeypatch)
    newest = out / "checkpoints" / "ckpt-e0002-b000000.pt"
    data = bytearray(newest.read_bytes())
    if damage == "truncated":
        newest.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x10  # one bit, in the middle of the tensor data
        newest.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match=r"ckpt-e0002-b000000\.pt fails its checksum \(truncated or corrupted\); "):
        run_recipe(load_recipe(recipe), out)
    assert_same_run(out, reference)


def test_hostile_training_checkpoint_with_a_valid_checksum_is_refused(tmp_path, monkeypatch):
    recipe = _tiny(tmp_path)
    reference = run_recipe(load_recipe(recipe), tmp_path / "ref").out_dir
    out = tmp_path / "out"
    _crash_after_two_epochs(recipe, out, monkeypatch)
    marker = tmp_path / "pwned"
    newest = out / "checkpoints" / "ckpt-e0002-b000000.pt"
    data = _hostile_bytes(marker, "checkpoint")
    newest.write_bytes(data)
    newest.with_suffix(".pt.sha256").write_text(hashlib.sha256(data).hexdigest())  # passes the checksum

    with pytest.warns(UserWarning, match=r"ckpt-e0002-b000000\.pt cannot be loaded safely \(UnpicklingError: "):
        run_recipe(load_recipe(recipe), out)
    assert not marker.exists()
    assert_same_run(out, reference)


# ------------------------------------------------------------------------------ teacher.checkpoint


TEACHER_FROM_FILE = TINY_RECIPE.replace('name = "natural"', 'name = "kd"') + (
    '\n[teacher]\nmodel = "resnet8"\ncheckpoint = "CHECKPOINT"\n'
)


@pytest.mark.parametrize("form", ["file", "run-folder"])
def test_hostile_teacher_checkpoint_is_refused_before_training(tmp_path, capsys, form):
    marker = tmp_path / "pwned"
    if form == "file":
        evil = tmp_path / "teacher.pt"
        evil.write_bytes(_hostile_bytes(marker, "model"))
        shown = evil
    else:
        evil = tmp_path / "teacher-run"
        evil.mkdir()
        (evil / "model.pt").write_bytes(_hostile_bytes(marker, "model"))
        shown = evil / "model.pt"
    recipe = _tiny(tmp_path, TEACHER_FROM_FILE.replace("CHECKPOINT", evil.name), "kd.toml")
    out = tmp_path / "out"

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"kdbench: error: teacher checkpoint {shown} {SAFE_LOAD_REFUSAL}"
    assert not marker.exists()
    assert not (out / "checkpoints").exists()  # refused before any training


def test_hostile_model_file_is_refused_by_export_and_eval(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(_hostile_bytes(marker, "model"))

    assert main(["export", str(run)]) == 2
    assert capsys.readouterr().err.strip() == f"kdbench: error: {run / 'model.pt'} {SAFE_LOAD_REFUSAL}"
    argv = ["eval", str(run / "model.pt"), "--model", "resnet8", "--dataset", "fake", "--attacks", "clean"]
    assert main([*argv, "--data-option", "image_size=16", "--data-option", "test_size=8"]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded safely (UnpicklingError)" in err
    assert err.strip().count("\n") == 0
    assert not marker.exists()
    assert not (run / "model.safetensors").exists()


# ----------------------------------------------------------------------------------- kdbench export


def test_export_round_trips_the_weights_with_metadata(tmp_path, capsys):
    recipe = _tiny(tmp_path)
    resolved = load_recipe(recipe)
    out = run_recipe(resolved, tmp_path / "out").out_dir
    capsys.readouterr()

    assert main(["export", str(out), "--format", "safetensors"]) == 0
    target = out / "model.safetensors"
    assert capsys.readouterr().out.strip() == f"exported: {target}"
    original = weights(out)
    exported = load_file(target)
    assert list(exported) == list(original) or set(exported) == set(original)
    for key, tensor in original.items():
        assert exported[key].dtype == tensor.dtype, key
        assert torch.equal(exported[key], tensor), key
    with safe_open(str(target), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "kdbench-model-1"
    assert meta["model"] == "resnet8"
    assert json.loads(meta["options"]) == {}
    assert meta["num_classes"] == "10"
    assert meta["recipe_hash"] == resolved.hash

    custom = tmp_path / "elsewhere" / "student.safetensors"
    assert main(["export", str(out / "model.pt"), "--out", str(custom)]) == 0
    assert custom.read_bytes() == target.read_bytes()


def test_export_of_an_unfinished_or_foreign_folder_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    _crash_after_two_epochs(_tiny(tmp_path), out, monkeypatch)
    cases = [
        (out, f"run {out} is not finished (no model.pt yet; newest checkpoint ckpt-e0002-b000000.pt); "),
        (tmp_path / "missing", f"{tmp_path / 'missing'} not found; give a run folder"),
        (tmp_path / "elsewhere", f"{tmp_path / 'elsewhere'} is not a kdbench run folder (no recipe.toml, no model.pt)"),
    ]
    (tmp_path / "elsewhere").mkdir()
    capsys.readouterr()
    for target, fragment in cases:
        assert main(["export", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kdbench: error: {fragment}"), err
        assert err.count("\n") == 1
