"""``train.compile``: the compiled step computes the eager step, and ``reduce-overhead`` replays CUDA graphs.

kdbench compiles each network's ``forward_all`` (`kdbench.engine.compile.compile_network`), the pass the attack and the
loss call. The CUDA tier checks what can only break on a GPU: inductor's CUDA kernels, CUDA-graph trees with the
attack's many forwards before one backward, and the BatchNorm mode switches around the attack. A CPU run
of the default mode exists too but compiles for minutes on a small CPU: it is marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.engine.compile import compile_network as _compile

from .conftest import build, cuda_only

MODES = [
    pytest.param("cpu", "default", marks=pytest.mark.slow, id="cpu-default"),
    pytest.param("cuda", "default", marks=cuda_only, id="cuda-default"),
    pytest.param("cuda", "reduce-overhead", marks=cuda_only, id="cuda-reduce-overhead"),
]


def _losses(built, steps: int) -> list[float]:
    return [float(sum(t.float() for t in terms.values())) for terms in built.run_steps(steps)]


@pytest.mark.parametrize(("device", "mode"), MODES)
def test_compiled_step_matches_the_eager_step(tmp_path, device, mode):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # A small network keeps compilation to seconds; the code path is that of any model.
    eager = build(tmp_path / "eager", device, "pgd_at", model="resnet8", batch=64, precision="fp32")
    compiled = build(tmp_path / "compiled", device, "pgd_at", model="resnet8", batch=64, precision="fp32")
    compiled.trainer.student.load_state_dict(eager.trainer.student.state_dict())
    _compile(compiled.trainer.student, mode)
    reference = _losses(eager, 4)
    got = _losses(compiled, 4)
    # Same batches, same attack starts, same initial weights: the same losses up to kernel rounding
    # (TF32 on CUDA), which sign(grad) in the attack can amplify a little.
    assert got == pytest.approx(reference, rel=5e-2, abs=1e-3)
    for a, b in zip(compiled.trainer.student.parameters(), eager.trainer.student.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled something
    if mode == "reduce-overhead":
        assert counters["inductor"]["cudagraph_skips"] == 0, f"CUDA graphs were skipped: {dict(counters['inductor'])}"
        assert _graph_launches(lambda: compiled.run_steps(1)) > 0, "no CUDA graph was replayed in a step"


def _graph_launches(fn) -> int:
    """``cudaGraphLaunch`` calls the CUDA runtime made while ``fn`` ran (the profiler's record)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    return sum(1 for event in prof.events() if event.name.startswith("cudaGraphLaunch"))


@pytest.mark.parametrize("_cuda", [pytest.param(None, marks=cuda_only, id="cuda")])
def test_compiled_bf16_distillation_step_runs(tmp_path, _cuda):
    torch._dynamo.reset()
    built = build(tmp_path, "cuda", "rslad", model="resnet8", batch=64)  # bf16, channels_last: the defaults
    _compile(built.trainer.student, "default")
    _compile(built.trainer.teacher, "default")
    losses = _losses(built, 4)
    assert all(v == v and abs(v) < 1e4 for v in losses)
