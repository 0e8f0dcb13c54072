"""``train.compile``: torch.compile the pass the engine and the attacks call, keeping the module.

Only ``forward_all`` is compiled (an instance attribute over the class's method), so the module, its
parameters and its state_dict keys are unchanged: checkpoints of compiled and eager runs are the same
files. ``mode="reduce-overhead"`` records CUDA graphs: every training batch has the same shape (the
loader drops the short last batch), so the attack's repeated passes replay one graph. `kdbench.run`
compiles for the whole run; ``kdbench bench`` for the timed block (`compiled`), so both time and train
the same compiled functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from kdbench.models.base import Network

__all__ = ["compile_network", "compiled", "uncompile_network"]


def compile_network(net: Network, mode: str = "default") -> None:
    """Replace ``net.forward_all`` by its torch.compile'd version (in place)."""
    net.forward_all = torch.compile(net.forward_all, mode=mode)  # type: ignore[method-assign]


def uncompile_network(net: Network) -> None:
    """Undo `compile_network`: the class's ``forward_all`` is back."""
    if "forward_all" in vars(net):
        del net.forward_all


@contextlib.contextmanager
def compiled(nets: Iterable[Network | None], enabled: bool, mode: str = "default") -> Iterator[None]:
    """`compile_network` each of ``nets`` (None entries skipped) for the block when ``enabled``."""
    chosen = [net for net in nets if net is not None] if enabled else []
    for net in chosen:
        compile_network(net, mode)
    try:
        yield
    finally:
        for net in chosen:
            uncompile_network(net)
