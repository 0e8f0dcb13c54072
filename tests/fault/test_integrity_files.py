"""Damaged or foreign files that kdbench wrote and later trusts: each is detected, then repaired or refused.

* A decode-cache entry with one flipped byte, or with its image tensor zeroed by a tool that rewrote
  the file, fails its checksum: the split is decoded again with a warning (never trained on).
* A finished run's model.pt with flipped bytes or truncated makes the run unfinished: the next
  ``kdbench run`` says so, rebuilds model.pt from the last good checkpoint and evaluates again; used
  directly as teacher.checkpoint it is refused in one line.
* A training checkpoint of another run (valid checksum) copied into a run's checkpoints/ is refused:
  the run trains from its own checkpoint (or from scratch) and ends like an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.data.cache import cache_file, load_split_cached
from kdbench.data.sources import FakeSource
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe

from ..conftest import write
from .conftest import TINY_RECIPE, assert_same_run, state_digest, weights


class _FingerprintedFake(FakeSource):
    """Fake images with a fingerprint, so that they go through the decode cache like a real dataset."""

    decodes = 0

    def load(self, split):  # type: ignore[no-untyped-def]
        type(self).decodes += 1
        return super().load(split)

    def fingerprint(self, split):  # type: ignore[no-untyped-def]
        return f"fake-for-cache-test {split} {self.config.model_dump_json()}"


def _source() -> _FingerprintedFake:
    return _FingerprintedFake(FakeSource.Config(train_size=64, test_size=16, image_size=16), None, False)


def _flip_byte_in_images(path: Path) -> None:
    """One flipped byte inside the stored image tensor (a disk's silent bit rot)."""
    data = bytearray(path.read_bytes())
    images = torch.load(io.BytesIO(bytes(data)), weights_only=True)["images"]
    marker = images.reshape(-1)[:64].numpy().tobytes()
    at = bytes(data).index(marker) + 10
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _zero_images(path: Path) -> None:
    """A tool that loads the entry, blanks the images and saves it back: a valid torch file of black images."""
    obj = torch.load(path, weights_only=True)
    obj["images"] = torch.zeros_like(obj["images"])
    torch.save(obj, path)


@pytest.mark.parametrize("damage", [_flip_byte_in_images, _zero_images], ids=["flipped-byte", "zeroed-images"])
def test_damaged_cache_entry_is_decoded_again_with_a_warning(tmp_path, damage):
    source = _source()
    _FingerprintedFake.decodes = 0
    truth = load_split_cached(source, "train", tmp_path)
    entry = cache_file(source.fingerprint("train"), tmp_path)
    damage(entry)

    with pytest.warns(UserWarning, match=r"unreadable data cache file .*fails its checksum.*decoding again"):
        data = load_split_cached(source, "train", tmp_path)
    assert _FingerprintedFake.decodes == 2
    assert torch.equal(data.images, truth.images)
    with warnings.catch_warnings():  # the entry was rewritten: a clean hit again
        warnings.simplefilter("error")
        assert torch.equal(load_split_cached(source, "train", tmp_path).images, truth.images)
    assert _FingerprintedFake.decodes == 2


# ------------------------------------------------------------------------------------------ model.pt


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for at in (len(data) // 2, len(data) // 2 + 7, len(data) // 2 + 301):
        data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize("damage", [_flip_bytes, _truncate], ids=["flipped-bytes", "truncated"])
def test_damaged_model_file_makes_the_run_unfinished_and_is_rebuilt(tmp_path, capsys, damage):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    reference = run_recipe(load_recipe(recipe), tmp_path / "ref").out_dir
    out = tmp_path / "out"
    run_recipe(load_recipe(recipe), out)
    capsys.readouterr()
    damage(out / "model.pt")

    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"{out / 'model.pt'} fails its checksum (truncated or corrupted); the run is not counted as finished" in err
    assert state_digest(weights(out)) == state_digest(weights(reference))  # rebuilt from the final checkpoint
    assert_same_run(out, reference)
    assert (
        json.loads((out / "result.json").read_text())["metrics"]
        == json.loads((reference / "result.json").read_text())["metrics"]
    )


def test_damaged_model_file_is_refused_as_a_teacher(tmp_path, capsys):
    teacher = write(tmp_path / "tiny.toml", TINY_RECIPE)
    run_recipe(load_recipe(teacher), tmp_path / "teacher-run")
    _flip_bytes(tmp_path / "teacher-run" / "model.pt")
    kd = TINY_RECIPE.replace('name = "natural"', 'name = "kd"').replace('name = "tiny"', 'name = "kd"')
    student = write(tmp_path / "kd.toml", kd + '\n[teacher]\nmodel = "resnet8"\ncheckpoint = "teacher-run"\n')
    capsys.readouterr()

    assert main(["run", str(student), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    model = tmp_path / "teacher-run" / "model.pt"
    assert err.startswith(f"kdbench: error: teacher checkpoint {model} fails its checksum (truncated or corrupted); ")
    assert err.count("\n") == 0
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_damaged_teacher_run_is_rebuilt_when_the_teacher_comes_from_its_recipe(tmp_path, capsys):
    teacher = write(tmp_path / "teacher.toml", TINY_RECIPE)
    runs = tmp_path / "runs"
    first = run_recipe(load_recipe(teacher), runs_dir=runs).out_dir
    good = state_digest(weights(first))
    _flip_bytes(first / "model.pt")
    kd = TINY_RECIPE.replace('name = "natural"', 'name = "kd"').replace('name = "tiny"', 'name = "kd"')
    student = write(tmp_path / "kd.toml", kd + '\n[teacher]\nrecipe = "teacher.toml"\n')

    run_recipe(load_recipe(student), runs_dir=runs)
    assert "fails its checksum" in capsys.readouterr().err
    assert state_digest(weights(first)) == good  # the teacher the student saw is the intact one


# --------------------------------------------------------------------------------- foreign checkpoints


def test_checkpoint_copied_from_another_run_is_refused(tmp_path):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    other = write(tmp_path / "other.toml", TINY_RECIPE.replace("seed = 3", "seed = 4"))
    reference = run_recipe(load_recipe(recipe), tmp_path / "ref").out_dir
    foreign = run_recipe(load_recipe(other), tmp_path / "foreign").out_dir
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("ckpt-e0003-b000000.pt", "ckpt-e0003-b000000.pt.sha256"):  # valid checksum, wrong run
        shutil.copy(foreign / "checkpoints" / name, out / "checkpoints" / name)

    with pytest.warns(UserWarning, match=r"ckpt-e0003-b000000\.pt belongs to another run \(recipe_hash "):
        run_recipe(load_recipe(recipe), out)
    assert_same_run(out, reference)
    assert state_digest(weights(out)) != state_digest(weights(foreign))
