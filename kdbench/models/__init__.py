"""Networks: the interface and the built-in CIFAR architectures (registered through entry points)."""

from kdbench.models.base import ModelOutput, Network, NetworkSpec, Normalize

__all__ = ["ModelOutput", "Network", "NetworkSpec", "Normalize"]
