"""An evaluation leaves the model and the caller's random state exactly as it found them.

The model runs in eval mode, float32, with every parameter's ``requires_grad`` switched off, all restored
afterwards (`frozen_eval`). Randomness comes from the evaluation's seed: each attack starts from
``manual_seed(seed)`` (`seed_generators`), so its result does not depend on which other attacks ran, and
everything happens inside ``torch.random.fork_rng`` (`isolated_rng`), so the caller's RNG state (CPU, and
the evaluation's CUDA device) is left exactly as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain

import torch
from torch import nn

__all__ = ["frozen_eval", "isolated_rng", "seed_generators"]


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, float32, parameters not requiring grad; every module's mode and flag restored on exit.

    A model with non-float32 floating tensors is evaluated as a float32 copy (the original is untouched).
    """
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in chain(model.parameters(), model.buffers())):
        model = copy.deepcopy(model).float()
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)


def seed_generators(device: torch.device, seed: int) -> None:
    """Seed the CPU generator and that of ``device`` (inside `isolated_rng`: the forked copies)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device, set to the evaluation's by `isolated_rng`
    elif device.type != "cpu":
        torch.manual_seed(seed)


@contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Fork the CPU generator and that of the evaluation's CUDA device (made current) for the block."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            yield
        return
    # pyautoattack also seeds the current CUDA device, even when it evaluates on the CPU.
    cuda_devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices):
        yield
