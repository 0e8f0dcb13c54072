"""The negatives generator of data-parallel crd/gacd lives on the training device and travels in checkpoints.

A checkpoint is loaded with ``map_location`` = the training device, so on CUDA the generator's saved
state arrives as a CUDA tensor; the restored memory must draw exactly what the original draws next,
whatever the global RNG does meanwhile (it differs between processes: attack starts).
"""

from __future__ import annotations

import io

import torch
from kdbench_plugins._contrastive import ContrastMemory

from kdbench.engine.distributed import Distributed


def _memory(device: str) -> ContrastMemory:
    torch.manual_seed(0)
    memory = ContrastMemory(200, 8, ("student", "teacher"), 0.5).to(device)
    memory.enter_data_parallel(Distributed(), seed=3)
    return memory


def test_shared_negatives_resume_from_a_checkpoint_on_the_device(device):
    memory = _memory(device)
    y = torch.arange(16, device=device) % 4
    index = torch.randperm(200, device=device)[:16]
    memory.observe_labels(index, y)
    memory.sample_negatives(y, 50, 4)  # advance the generator
    buffer = io.BytesIO()
    torch.save(memory.state_dict(), buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), map_location=device, weights_only=True)
    restored = _memory(device)
    restored.load_state_dict(state)
    torch.manual_seed(1)  # the global RNG plays no part in the shared draws
    expected = memory.sample_negatives(y, 50, 4)
    torch.manual_seed(2)
    assert torch.equal(restored.sample_negatives(y, 50, 4), expected)
    assert expected.device.type == torch.device(device).type
    assert not (memory.labels[expected] == y[:, None]).any()  # negatives of other classes only
