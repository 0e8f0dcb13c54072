"""The run folder under concurrency and after kills.

* "Already finished" is checked again once the run lock is held: a process that finds the run
  unfinished, then gets the lock after another process finished it, reports the finished result
  instead of evaluating (and rewriting result.json) a second time.
* Temporary files that a kill mid-write left behind (a model.pt or result.json being written, a
  decode-cache entry) are removed when the folder is next opened, once their writer is gone;
  those of a live writer are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

from kdbench.data.cache import load_split_cached
from kdbench.data.sources import FakeSource
from kdbench.recipe import load_recipe
from kdbench.run import run_recipe
from kdbench.run_folder import RunFolder

from ..conftest import write
from .conftest import TINY_RECIPE


def test_finished_is_checked_again_under_the_lock(tmp_path, monkeypatch):
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    finished = run_recipe(load_recipe(recipe), tmp_path / "finished").out_dir
    out = tmp_path / "out"
    original_lock = RunFolder.lock

    @contextlib.contextmanager
    def lock_after_the_other_process_finished(folder: RunFolder) -> Iterator[None]:
        # What a second process sees when the first one finishes between its check and its lock.
        shutil.copytree(finished, folder.path, dirs_exist_ok=True)
        with original_lock(folder):
            yield

    monkeypatch.setattr(RunFolder, "lock", lock_after_the_other_process_finished)
    outcome = run_recipe(load_recipe(recipe), out)

    assert outcome.reused
    assert (out / "result.json").read_bytes() == (finished / "result.json").read_bytes()
    assert (out / "result.json").stat().st_mtime_ns == (finished / "result.json").stat().st_mtime_ns


class _Fingerprinted(FakeSource):
    """Fake images that go through the decode cache, like a real dataset."""

    def fingerprint(self, split):  # type: ignore[no-untyped-def]
        return f"fake {split}"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_are_removed_when_the_folder_is_opened(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(cache))
    recipe = write(tmp_path / "tiny.toml", TINY_RECIPE)
    out = tmp_path / "out"
    out.mkdir()
    cache.mkdir()
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            out / f".model.pt.tmp-{dead}",
            out / f".result.json.tmp-{dead}",
            out / f".metrics.jsonl.tmp-{dead}",
            cache / f".0123456789abcdef.pt.tmp-{dead}",
        ]
        for path in stale:
            path.write_bytes(os.urandom(1 << 20))  # a megabyte each of a half-written file
        in_use = out / f".result.json.tmp-{live.pid}"
        in_use.write_bytes(b"{")

        run_recipe(load_recipe(recipe), out)  # opens the run folder
        load_split_cached(_Fingerprinted(FakeSource.Config(train_size=64, test_size=16), None, False), "train", cache)

        assert [p for p in stale if p.exists()] == []
        assert in_use.exists()  # its writer still runs
        assert (out / "result.json").is_file()
    finally:
        live.kill()
        live.wait()
