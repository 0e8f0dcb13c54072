"""A random generator that every data-parallel process holds in the same state, saved in checkpoints.

The contrastive methods draw ``N`` negatives per anchor from ``B x M`` uniform keys. In a data-parallel
run every process must draw the keys a single process would draw for the *global* batch and keep the
rows of its own slice, so the draws come from one generator seeded by the run (the same seed on every
process) and advanced by the same calls everywhere. Its state is the module's ``extra_state``: it is
saved in every checkpoint through ``state_dict()`` and restored on resume, so a resumed run draws what
an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SharedGenerator", "shared_seed"]


def shared_seed(seed: int) -> int:
    """The generator's seed for run seed ``seed``: a stream distinct from the global RNG's and the loader's."""
    return (seed * 2_654_435_761 + 0x5EED) % (2**63)


class SharedGenerator(nn.Module):
    """A ``torch.Generator`` on ``device`` seeded by `shared_seed`; its state travels in ``state_dict()``."""

    def __init__(self, seed: int, device: torch.device | str):
        super().__init__()
        self.seed = int(seed)
        self.generator = torch.Generator(device=device).manual_seed(shared_seed(self.seed))

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # A checkpoint loaded with map_location=cuda carries the state on the GPU; generators take a CPU tensor.
        self.generator.set_state(state["state"].cpu())
        self.seed = int(state["seed"])
