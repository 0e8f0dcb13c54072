"""Host synchronisations of a piece of code: counted on any device, and counted by the CUDA runtime on a GPU.

CUDA work is queued asynchronously; the host waits for the device only when it reads a device value
(``.item()``, ``bool(t)``, ``.tolist()``, a copy to the CPU) or calls an operation whose output size
depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``). A training step
that does neither lets the CPU run ahead and keeps the GPU busy (docs/performance.md).

`HostReads` catches those operations at the ATen dispatcher, so the same check runs on the CPU, where
nothing actually synchronises, and proves the logic free of them. `cuda_synchronizations` counts what the
CUDA runtime did: the ``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize`` and
blocking ``cudaMemcpy`` calls recorded by the profiler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CUDA_SYNC_CALLS", "HostReads", "cuda_synchronizations"]

_aten = torch.ops.aten
#: Operations whose result the host must wait for (a value read back, or a data-dependent output size).
_SYNCING = {
    _aten._local_scalar_dense.default,  # .item(), int(t), float(t), bool(t)
    _aten.is_nonzero.default,
    _aten.equal.default,
    _aten.nonzero.default,
    _aten.nonzero_static.default,
    _aten.masked_select.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
}
#: CUDA runtime calls that block the host until the device has caught up.
CUDA_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")


def _is_bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class HostReads(TorchDispatchMode):
    """Counts the operations run inside the block that would make the host wait for a CUDA device.

    ``counts`` maps operation names to how often they ran; ``total`` is their sum. Besides `_SYNCING`,
    boolean-mask indexing and copies from a non-CPU tensor to the CPU count.
    """

    def __init__(self) -> None:
        # torch leaves TorchDispatchMode.__init__ unannotated (mypy: an untyped call).
        super().__init__()  # type: ignore[no-untyped-call]
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _SYNCING:
            self.counts[str(func.overloadpacket.__name__)] += 1
        elif func.overloadpacket in (_aten.index, _aten.index_put, _aten.index_put_) and _is_bool_index(args):
            self.counts["boolean-mask index"] += 1
        elif func.overloadpacket in (_aten._to_copy, _aten.copy_):
            out = func(*args, **kwargs)
            source = args[1] if func.overloadpacket is _aten.copy_ else args[0]
            if isinstance(source, torch.Tensor) and source.device.type != "cpu" and out.device.type == "cpu":
                self.counts["copy to cpu"] += 1
            return out
        return func(*args, **kwargs)


def cuda_synchronizations(fn: Callable[[], Any]) -> Counter[str]:
    """Run ``fn()`` under the profiler and count the blocking CUDA runtime calls it made, by name.

    The profiler synchronises the device itself when it stops, inside the recorded range; what it
    records around an empty block is subtracted. Includes the synchronisations CUDA needs on its own
    (e.g. cuDNN's benchmark search on a new shape), so run ``fn`` once before counting.
    """
    own = _profiled_sync_calls(lambda: None)
    return _profiled_sync_calls(fn) - own  # Counter subtraction keeps positive counts only


def _profiled_sync_calls(fn: Callable[[], Any]) -> Counter[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    return Counter(event.name for event in prof.events() if event.name in CUDA_SYNC_CALLS)
