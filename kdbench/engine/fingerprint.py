"""Fingerprints of a module's tensors: proof that a frozen network (the teacher) stayed unchanged.

The teacher is fingerprinted once when the trainer is built and checked again before every
checkpoint is written, never per step: one sha256 per tensor of the state_dict (parameters and
buffers, so a BatchNorm's running statistics count). A method that writes into the teacher (an
in-place update, or a forward pass in train mode that moves its BatchNorm statistics) breaks the
distillation it claims and the bitwise resume: the next check stops the run and names the method.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from kdbench._errors import PluginError

__all__ = ["TeacherModifiedError", "changed_tensors", "tensor_digests"]


class TeacherModifiedError(PluginError):
    """A method changed the teacher's weights or buffers during training."""


def tensor_digests(module: nn.Module) -> dict[str, str]:
    """``{state_dict key: sha256 of dtype, shape and raw bytes}`` (bytes, so bf16 and ints hash alike)."""
    digests: dict[str, str] = {}
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        digests[key] = h.hexdigest()
    return digests


def changed_tensors(before: dict[str, str], module: nn.Module) -> list[str]:
    """Keys whose tensor differs from ``before`` (added or removed keys included), sorted."""
    now = tensor_digests(module)
    return sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
