"""Resumable evaluation: per-chunk, per-attack outcomes on disk, tied to the model and the settings."""

from __future__ import annotations

import pytest
import torch

from kdbench import UserError
from kdbench.engine.distributed import Distributed
from kdbench.evaluation import evaluate
from kdbench.evaluation.progress_store import ChunkOutcome, EvalProgressStore
from kdbench.evaluation.sharding import chunk_seed, plan_chunks, recorded_chunk_size
from kdbench.models.base import NetworkSpec
from kdbench.results import Result
from kdbench.testing import TinyNet

from .conftest import minimal_result

ATTACKS = ["clean", "fgsm", "pgd3"]
EPS = 0.03  # with the data below about half the examples fall to each attack: the outcomes carry information


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet(NetworkSpec(10, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).eval()
    torch.nn.init.normal_(net.head.weight, std=3.0)  # spread the untrained logits: several classes predicted
    return net


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of random brightness per channel plus noise; labels: the first model's predictions."""
    g = torch.Generator().manual_seed(1)
    level = torch.rand(n, 3, 1, 1, generator=g)
    x = (level * 255 + torch.randn(n, 3, 16, 16, generator=g) * 20).clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        y = _net()(x.float() / 255).argmax(1)
    return x, y


def _eval(net, store=None, chunk_size=8, **kw):
    x, y = _data()
    return evaluate(net, x, y, ATTACKS, eps=EPS, batch_size=6, seed=5, chunk_size=chunk_size, store=store, **kw)


def test_chunks_are_seeded_apart_and_chunk_zero_keeps_the_seed():
    assert chunk_seed(5, 0) == 5
    assert len({chunk_seed(5, k) for k in range(100)}) == 100
    assert [(c.start, c.stop) for c in plan_chunks(20, 8)] == [(0, 8), (8, 16), (16, 20)]
    assert [(c.start, c.stop) for c in plan_chunks(20, 0)] == [(0, 20)]
    with pytest.raises(UserError, match=r"eval\.chunk_size must be >= 0"):
        plan_chunks(20, -1)


def test_a_chunk_is_what_one_process_finds_on_it_alone():
    """Chunk k's outcomes depend on chunk k only: evaluating it alone with its seed gives the same ones."""
    net = _net()
    whole = _eval(net)
    x, y = _data()
    alone = evaluate(net, x[16:24], y[16:24], ATTACKS, eps=EPS, batch_size=6, seed=chunk_seed(5, 2))
    for name in ATTACKS:
        assert torch.equal(whole.correct[name][16:24], alone.correct[name]), name
    assert whole.settings["pgd3"]["chunk_size"] == 8
    assert 0 < whole.counts["pgd3"] < whole.counts["clean"]  # not vacuous


def test_stored_chunks_are_read_back_instead_of_recomputed(tmp_path):
    net = _net()
    store = EvalProgressStore(tmp_path / "eval.progress")
    first = _eval(net, store)
    files = sorted(p.name for p in store.path.glob("*.pt"))
    assert files == sorted(f"{a}-c{k:05d}.pt" for a in ATTACKS for k in range(5))
    # Plant outcomes no attack would produce: a resumed evaluation must report them (it read the file).
    planted = torch.zeros(8, dtype=torch.bool)
    store.save("pgd3", 1, 8, 16, ChunkOutcome(planted))
    again = _eval(net, EvalProgressStore(tmp_path / "eval.progress"))
    assert not again.correct["pgd3"][8:16].any()
    assert torch.equal(again.correct["pgd3"][:8], first.correct["pgd3"][:8])
    assert torch.equal(again.correct["fgsm"], first.correct["fgsm"])


def test_damaged_or_stale_progress_is_ignored(tmp_path):
    net = _net()
    folder = tmp_path / "eval.progress"
    reference = _eval(net)
    store = EvalProgressStore(folder)
    _eval(net, store)
    damaged = store.path / "pgd3-c00002.pt"
    damaged.write_bytes(damaged.read_bytes()[:-7])  # truncated: fails its checksum
    resumed = _eval(net, EvalProgressStore(folder))
    assert resumed.counts == reference.counts
    assert torch.equal(resumed.correct["pgd3"], reference.correct["pgd3"])
    # Another model (or other settings): another key; the old progress is removed, never read.
    other = _net(seed=1)
    old_key_folder = store.path
    fresh = _eval(other, EvalProgressStore(folder))
    assert not old_key_folder.exists()
    assert fresh.counts == _eval(other).counts
    before = sorted(p.name for p in folder.iterdir())
    _eval(other, EvalProgressStore(folder), chunk_size=10)  # another chunk size: another key as well
    assert sorted(p.name for p in folder.iterdir()) != before


def test_one_chunk_without_a_world_is_the_evaluation_before_chunks():
    net = _net()
    x, y = _data()
    plain = evaluate(net, x, y, ATTACKS, eps=EPS, batch_size=6, seed=5)
    chunked = evaluate(net, x, y, ATTACKS, eps=EPS, batch_size=6, seed=5, chunk_size=0, world=Distributed())
    assert plain.counts == chunked.counts
    assert "chunk_size" not in plain.settings["pgd3"]  # result.json unchanged for single-process runs


def _result(evaluation: object = None) -> Result:
    """A minimal result with ``evaluation`` (without one when None)."""
    return minimal_result() if evaluation is None else minimal_result(evaluation=evaluation)


def test_the_chunk_size_a_result_recorded_is_read_back_defensively():
    assert recorded_chunk_size(_result({"attacks": {"pgd20": {"chunk_size": 16}, "cw": {"chunk_size": 16}}})) == 16
    assert recorded_chunk_size(_result({"attacks": {"pgd20": {"steps": 20}}})) is None  # one chunk
    for record in [None, _result(), _result({}), _result({"attacks": 3}), _result({"attacks": {"a": 5}})]:
        assert recorded_chunk_size(record) is None
    assert recorded_chunk_size(_result({"attacks": {"a": {"chunk_size": True}}})) is None
    assert recorded_chunk_size(_result({"attacks": {"a": {"chunk_size": 4}, "b": {"chunk_size": 8}}})) is None
