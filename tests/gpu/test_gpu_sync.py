"""The training step and the device-resident loader make the host wait for nothing.

`HostReads` catches every operation that would synchronise a CUDA device (on any device, so the CPU run
checks the logic); on CUDA the runtime is also asked: ``torch.cuda.set_sync_debug_mode("error")`` makes any
synchronising call raise, and the profiler's count of blocking CUDA calls over the timed steps must be zero.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.bench.syncs import HostReads, cuda_synchronizations
from kdbench.data.base import SplitData
from kdbench.data.loader import DeviceLoader, crop_flip

from .conftest import build, cuda_only

METHODS = ["pgd_at", "trades", "kd", "ard", "rslad", "crd", "gacd"]
#: On the CPU, in the default suite, the three kinds of step (attack + CE, attack + teacher KL, contrastive
#: memory); every method in the slow tier and on CUDA.
CPU_DEFAULT = {"pgd_at", "rslad", "gacd"}
CASES = [pytest.param("cpu", m, id=f"cpu-{m}", marks=() if m in CPU_DEFAULT else pytest.mark.slow) for m in METHODS] + [
    pytest.param("cuda", m, id=f"cuda-{m}", marks=cuda_only) for m in METHODS
]


@pytest.mark.parametrize(("device", "method"), CASES)
def test_training_step_reads_nothing_back(device, tmp_path, method):
    built = build(tmp_path, device, method)
    batches = built.batches()
    built.run_steps(1, batches)  # warm-up: cuDNN's autotuner synchronises on each new shape
    with HostReads() as reads:
        built.run_steps(3, batches)
    assert reads.total == 0, f"{method}: host reads inside the step: {dict(reads.counts)}"


@pytest.mark.parametrize("method", ["pgd_at", "rslad", "gacd"])
@pytest.mark.parametrize("_cuda", [pytest.param(None, marks=cuda_only, id="cuda")])
def test_cuda_runtime_sees_no_synchronisation_in_the_step(tmp_path, method, _cuda):
    built = build(tmp_path, "cuda", method)
    batches = built.batches()
    built.run_steps(2, batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call inside the steps raises
    try:
        built.run_steps(3, batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    calls = cuda_synchronizations(lambda: built.run_steps(3, batches))
    assert not calls, f"{method}: blocking CUDA calls in 3 steps: {dict(calls)}"


def _split(n: int = 40, size: int = 8) -> SplitData:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return SplitData(images, torch.arange(n) % 10)


def test_device_loader_is_resident_and_follows_the_cpu_order(device):
    split = _split()
    on_device = DeviceLoader(split, device, 8, train=True, seed=3, channels_last=device == "cuda")
    on_cpu = DeviceLoader(split, "cpu", 8, train=True, seed=3)
    assert on_device.images.device.type == device and on_device.images.dtype == torch.uint8
    with HostReads() as reads:
        first = list(on_device.epoch(2))
    assert reads.total == 0, dict(reads.counts)
    again = list(on_device.epoch(2))
    reference = list(on_cpu.epoch(2))
    assert len(first) == len(reference) == 5
    for (x, y, index), (x2, _, index2), (_, y_cpu, index_cpu) in zip(first, again, reference, strict=True):
        assert x.device.type == device and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
        assert torch.equal(x, x2) and torch.equal(index, index2)  # an epoch depends on (seed, epoch) only
        # The order is drawn on the CPU generator: the same samples on every device.
        assert torch.equal(index.cpu(), index_cpu) and torch.equal(y.cpu(), y_cpu)
        if device == "cuda":
            assert x.is_contiguous(memory_format=torch.channels_last)
    seen = torch.cat([i for _, _, i in first]).cpu()
    assert len(set(seen.tolist())) == 40  # a permutation of the split


def test_crop_flip_on_the_device_equals_the_cpu_gather(device):
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=gen)
    offsets = torch.randint(0, 9, (6, 2), generator=gen)
    flips = torch.rand(6, generator=gen) < 0.5
    expected = crop_flip(images, offsets, flips, 4)
    got = crop_flip(images.to(device), offsets.to(device), flips.to(device), 4)
    assert torch.equal(got.cpu(), expected)
    # Spot check against the definition: pad with zeros, take the window, mirror.
    padded = torch.nn.functional.pad(images[0], (4, 4, 4, 4))
    r, c = offsets[0].tolist()
    window = padded[:, r : r + 8, c : c + 8]
    assert torch.equal(expected[0], window.flip(-1) if flips[0] else window)


def test_host_reads_catches_what_would_synchronise(device):
    x = torch.rand(8, device=device)
    with HostReads() as reads:
        x.sum().item()
        bool(x.max() > 0.5)
        x[x > 0.5]
        torch.nonzero(x)
        x.cpu()
    expected = {"_local_scalar_dense": 2, "boolean-mask index": 1, "nonzero": 1}
    if device == "cuda":
        expected["copy to cpu"] = 1
    assert {k: reads.counts[k] for k in expected} == expected
    with HostReads() as quiet:
        (x * 2).sum().add_(1)
    assert quiet.total == 0
