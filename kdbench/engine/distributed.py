"""Data-parallel training with torch.distributed, launched by torchrun.

``torchrun --nproc_per_node=N -m kdbench run RECIPE`` starts N processes; each builds the same
components, trains on its own slice of every global batch (kdbench.data.loader), and averages
gradients with one all-reduce per step. Only rank 0 writes checkpoints and results.

Why not the ``DistributedDataParallel`` wrapper: a robust-distillation step runs the student many
times before one backward pass (k attack iterations with input-only gradients, then the clean and
adversarial views a method asks for). DDP's reducer expects one forward per backward through its
wrapper and fails or needs ``find_unused_parameters`` with every extra pass. Averaging the gradients
after ``backward()`` with ``all_reduce`` over one flattened buffer is what the reducer does at the
end of a step, without those constraints; the launch, rendezvous and collectives are torch's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Distributed", "setup_distributed", "teardown_distributed"]

#: Other ranks wait in collectives while rank 0 evaluates a finished run (AutoAttack may take hours).
COLLECTIVE_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Average ``.grad`` over processes with one all-reduce of a flattened buffer."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Make every process start from rank 0's parameters and buffers."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over processes (in place; returned for chaining)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum of ``tensor`` over processes (in place; returned for chaining)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor: (B, ...)`` of every process concatenated in rank order: ``(world_size * B, ...)``.

        Every process must pass the same shape (a training step's slices are equal: the loader drops
        the last incomplete global batch). No autograd: the result is a new tensor. ``tensor`` itself
        when not data-parallel.
        """
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.detach().contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's picklable ``obj``, in rank order, on every process (``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj`` on every process (``obj`` itself alone)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_sizes(self, n: int, device: torch.device | str = "cpu") -> list[int]:
        """The ``n`` of every process, in rank order (``[n]`` when not data-parallel)."""
        if not self.enabled:
            return [n]
        return [int(v) for v in self.all_gather(torch.tensor([n], dtype=torch.int64, device=device)).tolist()]


def setup_distributed(device: str) -> Distributed:
    """Join the torchrun job described by RANK/WORLD_SIZE/LOCAL_RANK, if any (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Distributed(rank=rank, world_size=world, local_rank=local)


def teardown_distributed(wait: bool = False) -> None:
    """Leave the process group. ``wait``: first meet every process at a barrier (the success path:
    other ranks wait there while rank 0 evaluates, so none tears the group down under another)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
