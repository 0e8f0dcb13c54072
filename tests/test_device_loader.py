"""Tests of the on-device loader (batches, augmentation, resume) and of balanced_subset."""

from __future__ import annotations

import pytest
import torch

from kdbench._errors import UserError
from kdbench.data.base import SplitData
from kdbench.data.loader import DeviceLoader, balanced_subset, crop_flip

# --------------------------------------------------------------------------------------------------
# DeviceLoader
# --------------------------------------------------------------------------------------------------


def toy_split(n: int = 100, size: int = 8, classes: int = 4) -> SplitData:
    images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(n) % classes
    return SplitData(images, labels)


def collect(loader: DeviceLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(loader.epoch(epoch))


def test_eval_loader_batches_in_order() -> None:
    data = toy_split(100)
    loader = DeviceLoader(data, "cpu", 32, train=False)
    batches = collect(loader, 0)
    assert len(loader) == len(batches) == 4
    assert loader.num_samples == 100
    assert [len(b[0]) for b in batches] == [32, 32, 32, 4]
    index = torch.cat([b[2] for b in batches])
    assert torch.equal(index, torch.arange(100))
    for x, y, idx in batches:
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert idx.dtype == torch.int64
        assert torch.equal(x, data.images[idx].float() / 255)
        assert torch.equal(y, data.labels[idx])


def test_train_loader_index_matches_unaugmented_images() -> None:
    data = toy_split(100)
    loader = DeviceLoader(data, "cpu", 16, train=True, seed=5, crop_padding=0, hflip=False)
    seen = []
    for x, y, idx in loader.epoch(0):
        assert x.shape == (16, 3, 8, 8)
        assert torch.equal(x, data.images[idx].float() / 255)
        assert torch.equal(y, data.labels[idx])
        seen.append(idx)
    seen_all = torch.cat(seen)
    assert len(seen_all) == 96
    assert len(seen_all.unique()) == 96
    assert not torch.equal(seen_all, torch.arange(96))


def test_train_loader_is_a_function_of_seed_and_epoch() -> None:
    data = toy_split(100)
    a = DeviceLoader(data, "cpu", 20, train=True, seed=1)
    b = DeviceLoader(data, "cpu", 20, train=True, seed=1)
    collect(b, 5)  # consuming another epoch first must not matter
    for (xa, ya, ia), (xb, yb, ib) in zip(collect(a, 3), collect(b, 3), strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)
        assert torch.equal(ia, ib)
    order = lambda loader, e: torch.cat([i for _, _, i in loader.epoch(e)])  # noqa: E731
    assert not torch.equal(order(a, 3), order(a, 4))
    assert not torch.equal(order(a, 3), order(DeviceLoader(data, "cpu", 20, train=True, seed=2), 3))


def test_resume_mid_epoch_gives_the_remaining_batches() -> None:
    loader = DeviceLoader(toy_split(100), "cpu", 10, train=True, seed=7)
    full = collect(loader, 2)
    tail = list(loader.epoch(2, start_batch=6))
    assert len(tail) == 4
    for (xa, _, ia), (xb, _, ib) in zip(full[6:], tail, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ia, ib)


def test_drop_last_only_when_more_than_one_batch() -> None:
    loader = DeviceLoader(toy_split(100), "cpu", 32, train=True)
    assert len(loader) == 3
    assert [len(b[0]) for b in loader.epoch(0)] == [32, 32, 32]
    small = DeviceLoader(toy_split(20), "cpu", 32, train=True)
    assert len(small) == 1
    assert [len(b[0]) for b in small.epoch(0)] == [20]
    exact = DeviceLoader(toy_split(64), "cpu", 32, train=True)
    assert len(exact) == 2


def distinctive_images(n: int, size: int = 8) -> torch.Tensor:
    """Every pixel value is unique within an image and never 0, so a window is identifiable."""
    h = torch.arange(size)[:, None]
    w = torch.arange(size)[None, :]
    channel = torch.arange(3)[:, None, None] * 70
    image = (1 + h * size + w + channel).to(torch.uint8)  # 1..204
    return image.expand(n, 3, size, size).clone()


def test_crop_flip_with_known_offsets() -> None:
    images = distinctive_images(3)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    offsets = torch.tensor([[4, 4], [0, 8], [2, 5]])
    flips = torch.tensor([False, False, True])
    out = crop_flip(images, offsets, flips, 4)
    assert torch.equal(out[0], images[0])  # centred, no flip: identity
    assert torch.equal(out[1], padded[1, :, 0:8, 8:16])
    assert (out[1][:, :4, :] == 0).all()
    assert (out[1][:, :, 4:] == 0).all()
    assert torch.equal(out[2], padded[2, :, 2:10, 5:13].flip(-1))
    assert torch.equal(crop_flip(images, torch.full((3, 2), 4), torch.ones(3, dtype=torch.bool), 4), images.flip(-1))


def test_train_augmentation_is_a_shifted_window_or_its_mirror() -> None:
    images = distinctive_images(64)
    data = SplitData(images, torch.zeros(64, dtype=torch.int64))
    padded = torch.nn.functional.pad(images[0], (4, 4, 4, 4))
    windows = {}
    for dy in range(9):
        for dx in range(9):
            window = padded[:, dy : dy + 8, dx : dx + 8]
            windows[(dy, dx, False)] = window
            windows[(dy, dx, True)] = window.flip(-1)
    loader = DeviceLoader(data, "cpu", 64, train=False)
    train = DeviceLoader(data, "cpu", 64, train=True, seed=0)
    found = set()
    for x, _, _ in train.epoch(0):
        for sample in (x * 255).round().to(torch.uint8):
            matches = [key for key, window in windows.items() if torch.equal(sample, window)]
            assert len(matches) == 1, "augmented sample is not a padded crop (or its mirror) of the image"
            found.add(matches[0])
    assert len(found) > 20  # offsets and flips actually vary
    assert {flip for _, _, flip in found} == {False, True}
    assert len(loader) == 1


def test_channels_last_output() -> None:
    loader = DeviceLoader(toy_split(40), "cpu", 16, train=True, channels_last=True)
    x, _, _ = next(iter(loader.epoch(0)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain = DeviceLoader(toy_split(40), "cpu", 16, train=True)
    x_plain, _, _ = next(iter(plain.epoch(0)))
    assert torch.equal(x, x_plain)


def test_subset_indices_give_positions_within_the_subset() -> None:
    data = toy_split(100)
    subset = torch.tensor([5, 17, 42, 99, 3])
    loader = DeviceLoader(data, "cpu", 2, train=False, subset_indices=subset)
    assert loader.num_samples == 5
    assert len(loader) == 3
    for x, y, idx in loader.epoch(0):
        assert int(idx.max()) < 5
        assert torch.equal(x, data.images[subset[idx]].float() / 255)
        assert torch.equal(y, data.labels[subset[idx]])
    with pytest.raises(UserError, match="out of range"):
        DeviceLoader(data, "cpu", 2, train=False, subset_indices=torch.tensor([100]))


# --------------------------------------------------------------------------------------------------
# balanced_subset
# --------------------------------------------------------------------------------------------------


def test_balanced_subset_is_balanced_deterministic_and_nested() -> None:
    labels = torch.arange(1000) % 10
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]
    subset = balanced_subset(labels, 105)
    assert len(subset) == 105
    assert len(subset.unique()) == 105
    assert torch.equal(subset, subset.sort().values)
    counts = torch.bincount(labels[subset], minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 1
    assert torch.equal(subset, balanced_subset(labels, 105))
    assert not torch.equal(subset, balanced_subset(labels, 105, seed=1))
    assert set(balanced_subset(labels, 50).tolist()) <= set(subset.tolist())
    assert torch.equal(balanced_subset(labels, 1000), torch.arange(1000))


def test_balanced_subset_with_a_rare_class() -> None:
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 50)
    counts = torch.bincount(labels[balanced_subset(labels, 30)]).tolist()
    assert counts == [10, 3, 17] or sorted(counts) == [3, 13, 14]


def test_balanced_subset_rejects_too_large_n() -> None:
    with pytest.raises(UserError, match="larger than the split"):
        balanced_subset(torch.zeros(10, dtype=torch.int64), 11)
