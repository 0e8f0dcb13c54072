"""The on-device loader: the whole split lives on the training device as uint8, batches are gathered there.

CIFAR-sized datasets fit in device memory many times over (50,000 x 3 x 32 x 32 bytes = 150 MiB), so
there are no worker processes, no host-to-device copies per batch and no host synchronisation: a
batch is an index gather, a vectorised random crop + flip and a conversion to float.

Reproducibility: an epoch's order and augmentation depend only on ``(seed, epoch)``, never on what
ran before, so a run resumed from a checkpoint at epoch ``e`` (even mid-epoch, via ``start_batch``)
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench._errors import UserError
from kdbench.data.base import SplitData

__all__ = ["Batch", "DeviceLoader", "balanced_subset", "crop_flip", "epoch_seed"]

#: ``(x float32 (B, C, H, W) in [0, 1], y int64 (B,), index int64 (B,))``.
Batch = tuple[Tensor, Tensor, Tensor]

_MASK64 = (1 << 64) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of one epoch: a function of ``(seed, epoch)`` only."""
    return (seed * 1_000_003 + epoch) & _MASK64


class DeviceLoader:
    """Batches of one split, resident on ``device``.

    ``train=True`` shuffles, augments (random crop with ``crop_padding`` zero pixels on each side and
    a random horizontal flip) and drops the last incomplete batch when the split holds more than one
    batch. ``subset_indices`` restricts the split to those samples; the returned ``index`` is then
    the position within the subset (``0 .. num_samples - 1``), the key for per-sample memory banks.
    """

    def __init__(
        self,
        data: SplitData,
        device: torch.device | str,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        subset_indices: Tensor | None = None,
        channels_last: bool = False,
        crop_padding: int = 4,
        hflip: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        images, labels = data
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be (N,) matching {len(images)} images, got {tuple(labels.shape)}")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if subset_indices is not None:
            subset_indices = torch.as_tensor(subset_indices, dtype=torch.int64).cpu()
            if subset_indices.dim() != 1:
                raise ValueError("subset_indices must be 1-D")
            if len(subset_indices) and (int(subset_indices.min()) < 0 or int(subset_indices.max()) >= len(images)):
                raise UserError(f"subset indices out of range for a split of {len(images)} samples")
            images, labels = images[subset_indices.to(images.device)], labels[subset_indices.to(labels.device)]
        if len(images) == 0:
            raise UserError("the dataset split is empty; check the data folder or the subset size")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.device = self.images.device  # with the index filled in (cuda -> cuda:0)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.channels_last = bool(channels_last)
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        # Data-parallel sharding: every process draws the same epoch order and takes its own slice
        # of each global batch (``batch_size`` samples per process, ``batch_size * world_size`` per step).
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def num_samples(self) -> int:
        """Samples in the (subset) split."""
        return len(self.labels)

    @property
    def global_batch_size(self) -> int:
        """Samples per optimiser step over all processes."""
        return self.batch_size * self.world_size

    @property
    def drop_last(self) -> bool:
        return self.train and (self.num_samples > self.global_batch_size or self.world_size > 1)

    def __len__(self) -> int:
        """Batches per epoch (per process; every process takes the same number of steps)."""
        if self.drop_last:
            return max(self.num_samples // self.global_batch_size, 1 if self.world_size == 1 else 0)
        return -(-self.num_samples // self.batch_size)

    def _generators(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
        """The shuffle generator (CPU, so the order is the same on every device) and the augment one."""
        base = epoch_seed(self.seed, epoch)
        order_gen = torch.Generator(device="cpu").manual_seed(base)
        aug_gen = torch.Generator(device=self.device).manual_seed(base ^ 0x9E3779B97F4A7C15)
        return order_gen, aug_gen

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch``, from batch ``start_batch`` on (for resuming mid-epoch)."""
        n, bs, steps = self.num_samples, self.batch_size, len(self)
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        if self.train:
            order_gen, aug_gen = self._generators(epoch)
            order = torch.randperm(n, generator=order_gen)
            if self.device.type == "cuda":  # pinned + non_blocking: no stream sync at the epoch start
                order = order.pin_memory().to(self.device, non_blocking=True)
            else:
                order = order.to(self.device)
            # All random numbers of the epoch at once: one kernel, and skipping batches changes nothing.
            span = 2 * self.crop_padding + 1
            offsets = torch.randint(0, span, (n, 2), generator=aug_gen, device=self.device)
            flips = torch.rand(n, generator=aug_gen, device=self.device) < 0.5
            if not self.hflip:
                flips = torch.zeros_like(flips)
        for step in range(start_batch, steps):
            if self.train:
                lo = step * self.global_batch_size + self.rank * bs
                hi = min(lo + bs, n)
            else:
                lo, hi = step * bs, min((step + 1) * bs, n)
            if self.train:
                index = order[lo:hi]
                x = self.images[index]
                y = self.labels[index]
                x = crop_flip(x, offsets[lo:hi], flips[lo:hi], self.crop_padding)
            else:
                index = torch.arange(lo, hi, device=self.device)
                x = self.images[lo:hi]
                y = self.labels[lo:hi]
            x = x.float().div_(255)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y, index


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Random crop of zero-padded images plus horizontal flip, for a whole batch at once.

    ``offsets (B, 2)`` are the top-left corners (row, column) of the crop window in the padded image,
    in ``[0, 2 * padding]``; ``flips (B,)`` selects mirrored samples. Implemented as one gather over
    the padded uint8 batch, so the cost is a single kernel whatever the batch size.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    device = images.device
    rows = offsets[:, 0:1] + torch.arange(height, device=device)  # (B, H)
    columns = torch.arange(width, device=device)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + offsets[:, 1:2]  # (B, W)
    b = torch.arange(batch, device=device)[:, None, None, None]
    c = torch.arange(channels, device=device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], columns[:, None, None, :]]


def balanced_subset(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` sample indices with the classes as equally represented as possible; sorted, deterministic.

    Depends only on ``(labels, n, seed)``, not on the run's seed, so every method of a comparison
    trains on the same images. Classes are filled round-robin from a seeded shuffle: each class gets
    ``n // k`` samples (the lowest class ids one more when ``n`` is not a multiple of ``k``) until a
    class runs out. Subsets are nested: a larger ``n`` contains every index of a smaller one.
    """
    labels = torch.as_tensor(labels).detach().cpu().to(torch.int64)
    total = len(labels)
    if n < 1:
        raise UserError(f"subset size must be at least 1, got {n}")
    if n > total:
        raise UserError(f"subset size {n} is larger than the split ({total} samples); use at most {total}")
    if total and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative")
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed & _MASK64))
    shuffled = labels[perm]
    # Rank of each shuffled sample within its class (0 for the first one seen, 1 for the next...).
    by_class = torch.argsort(shuffled, stable=True)
    counts = torch.bincount(shuffled)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(shuffled)
    rank[by_class] = torch.arange(total) - starts[shuffled[by_class]]
    key = rank * len(counts) + shuffled  # round r of every class before round r + 1
    chosen = perm[torch.argsort(key, stable=True)[:n]]
    return torch.sort(chosen).values
