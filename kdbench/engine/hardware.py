"""Device, precision and determinism choices, resolved once per run."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from kdbench._errors import UserError

__all__ = ["Hardware", "resolve_hardware"]


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    precision: str  # "fp32" | "bf16"
    channels_last: bool

    def autocast(self) -> Callable[[], AbstractContextManager[Any]]:
        """A factory of autocast contexts for model passes (perturbations stay fp32 in the attacks)."""
        if self.precision == "bf16":
            device_type = self.device.type
            return lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        return nullcontext

    def describe(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({torch.get_num_threads()} threads)"


def resolve_hardware(
    device: str, precision: str, channels_last: bool | None, deterministic: bool, local_rank: int = 0
) -> Hardware:
    """Turn the recipe's ``train.device/precision/channels_last/deterministic`` into concrete choices."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available; use --set train.device=auto")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if channels_last is None:
        channels_last = dev.type == "cuda"
    if deterministic:
        # cuBLAS needs this before the first matmul to be reproducible; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Hardware(dev, precision, channels_last)
