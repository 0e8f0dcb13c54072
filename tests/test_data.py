"""Tests of the data sources: entry points, fake data, ImageFolder trees, torchvision layouts, missing data,
the real offline copy."""

from __future__ import annotations

import os
import warnings
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench._errors import UserError
from kdbench.data import decode
from kdbench.data.base import DatasetSource
from kdbench.data.cache import load_split_cached
from kdbench.data.sources import CIFAR10, CIFAR100, STL10, FakeSource, ImageFolderSource, decode_images
from kdbench.data.standard import CIFAR10_CLASSES, CIFAR100_CLASSES, STL10_CLASSES

REPO_ROOT = Path(__file__).resolve().parents[1]


def fake(**options: int) -> FakeSource:
    return FakeSource(FakeSource.Config(**options), None, False)


def data_root() -> Path | None:
    """The offline data folder: $KDBENCH_DATA_ROOT, else ../shared/data next to the repository."""
    env = os.environ.get("KDBENCH_DATA_ROOT")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "cifar10").is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------------------------------
# entry points and static facts
# --------------------------------------------------------------------------------------------------


def test_entry_points_resolve_to_sources() -> None:
    eps = {ep.name: ep for ep in metadata.entry_points(group="kdbench.datasets")}
    for name in ("cifar10", "cifar100", "stl10", "imagefolder", "fake"):
        assert name in eps, f"entry point {name} missing (reinstall the package)"
        assert issubclass(eps[name].load(), DatasetSource)


def test_standard_class_orders_are_alphabetical() -> None:
    # Folder trees are labelled by these names; torchvision's label order is the same.
    for names, count in ((CIFAR10_CLASSES, 10), (CIFAR100_CLASSES, 100), (STL10_CLASSES, 10)):
        assert len(names) == len(set(names)) == count
        assert list(names) == sorted(names)


def test_info_of_standard_sources() -> None:
    info = CIFAR10(CIFAR10.Config(), None, False).info()
    assert (info.num_classes, info.image_size) == (10, 32)
    assert info.mean == (0.4914, 0.4822, 0.4465)
    assert info.std == (0.2471, 0.2435, 0.2616)
    assert CIFAR100(CIFAR100.Config(), None, False).info().num_classes == 100
    assert STL10(STL10.Config(), None, False).info().image_size == 96
    assert STL10(STL10.Config(image_size=32), None, False).info().image_size == 32


# --------------------------------------------------------------------------------------------------
# fake source
# --------------------------------------------------------------------------------------------------


def test_fake_source_shapes_and_determinism() -> None:
    src = fake(num_classes=5, image_size=16, train_size=100, test_size=40, seed=3)
    train, test = src.load("train"), src.load("test")
    assert train.images.shape == (100, 3, 16, 16)
    assert train.images.dtype == torch.uint8
    assert train.labels.shape == (100,)
    assert train.labels.dtype == torch.int64
    assert test.images.shape == (40, 3, 16, 16)
    assert torch.bincount(train.labels).tolist() == [20] * 5
    again = fake(num_classes=5, image_size=16, train_size=100, test_size=40, seed=3).load("train")
    assert torch.equal(train.images, again.images)
    assert torch.equal(train.labels, again.labels)
    assert not torch.equal(
        train.images, fake(num_classes=5, image_size=16, train_size=100, seed=4).load("train").images
    )
    # The train split does not depend on the test split's size.
    other = fake(num_classes=5, image_size=16, train_size=100, test_size=7, seed=3).load("train")
    assert torch.equal(train.images, other.images)
    assert src.fingerprint("train") is None
    assert src.info().num_classes == 5
    assert src.info().image_size == 16


def test_fake_source_is_learnable() -> None:
    """A nearest-class-mean classifier fitted on train must classify test almost perfectly."""
    src = fake(train_size=500, test_size=200)
    train, test = src.load("train"), src.load("test")
    x = train.images.flatten(1).float()
    means = torch.stack([x[train.labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(test.images.flatten(1).float(), means).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.95


def test_fake_source_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        FakeSource.Config(num_classes=1)
    with pytest.raises(ValueError, match="extra"):
        FakeSource.Config(size=3)


# --------------------------------------------------------------------------------------------------
# ImageFolder trees
# --------------------------------------------------------------------------------------------------


def write_image(path: Path, image: torch.Tensor) -> None:
    """Write ``uint8 (C, H, W)`` (C = 1 or 3) as a lossless PNG with Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


def make_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3, size: int = 8) -> None:
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for name in classes:
            for i in range(per_class):
                image = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
                write_image(root / split / name / f"{i:04d}.png", image)


def test_imagefolder_decodes_in_sorted_order(tmp_path: Path) -> None:
    make_tree(tmp_path, classes=("zebra", "ant"), per_class=3)
    write_image(tmp_path / "train" / "ant" / "9999.png", torch.full((1, 8, 8), 77, dtype=torch.uint8))  # grayscale
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
    src = ImageFolderSource(ImageFolderSource.Config(), tmp_path, False)
    info = src.info()
    assert info.class_names == ("ant", "zebra")
    assert info.image_size == 8
    assert info.mean == (0.5, 0.5, 0.5)
    data = src.load("train")
    assert data.images.shape == (7, 3, 8, 8)
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert (data.images[3] == 77).all()  # grayscale -> 3 equal channels, sorted last within "ant"
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "train" / "ant" / "0000.png"))).permute(2, 0, 1)
    assert torch.equal(data.images[0], expected)


def test_decoders_agree_and_stay_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path, per_class=20)
    files = sorted((tmp_path / "train").rglob("*.png"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision's per-call deprecation warning must not escape
        default = decode_images(files)
    monkeypatch.setattr(decode, "_backend", lambda: "pillow")
    assert torch.equal(decode_images(files, num_workers=2), default)
    assert torch.equal(decode_images(files, num_workers=1), default)


def test_imagefolder_fingerprint_tracks_changes(tmp_path: Path) -> None:
    make_tree(tmp_path)
    src = ImageFolderSource(ImageFolderSource.Config(), tmp_path, False)
    before = src.fingerprint("train")
    assert before == src.fingerprint("train")
    assert before != src.fingerprint("test")
    write_image(tmp_path / "train" / "cat" / "0100.png", torch.zeros((3, 8, 8), dtype=torch.uint8))
    assert src.fingerprint("train") != before
    resized = ImageFolderSource(ImageFolderSource.Config(image_size=4), tmp_path, False)
    assert resized.fingerprint("test") != src.fingerprint("test")


def test_imagefolder_resizes_when_asked(tmp_path: Path) -> None:
    make_tree(tmp_path, size=8)
    write_image(tmp_path / "train" / "cat" / "0100.png", torch.zeros((3, 12, 10), dtype=torch.uint8))
    with pytest.raises(UserError, match="image_size"):
        ImageFolderSource(ImageFolderSource.Config(), tmp_path, False).load("train")
    src = ImageFolderSource(ImageFolderSource.Config(image_size=6), tmp_path, False)
    assert src.info().image_size == 6
    assert src.load("train").images.shape == (7, 3, 6, 6)


def test_imagefolder_errors_name_the_folder(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "wolf")
    with pytest.raises(UserError, match=r"only in .*train.*dog"):
        ImageFolderSource(ImageFolderSource.Config(), tmp_path, False).load("train")
    (tmp_path / "test" / "wolf").rename(tmp_path / "test" / "dog")
    (tmp_path / "train" / "bird").mkdir()
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(UserError, match=r"bird: no images"):
        ImageFolderSource(ImageFolderSource.Config(), tmp_path, False).load("train")
    with pytest.raises(UserError, match=r"data\.root"):
        ImageFolderSource(ImageFolderSource.Config(), None, False).load("train")


def test_cifar_folder_tree_needs_the_standard_class_names(tmp_path: Path) -> None:
    make_tree(tmp_path, classes=("cat", "dog"), size=32)
    with pytest.raises(UserError, match="expected exactly"):
        CIFAR10(CIFAR10.Config(), tmp_path, False).load("test")


# --------------------------------------------------------------------------------------------------
# torchvision layouts (without the real files)
# --------------------------------------------------------------------------------------------------


def test_cifar_torchvision_arrays_become_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    nhwc = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    fake_ds = SimpleNamespace(data=nhwc, targets=[0, 1, 2, 3, 9])
    monkeypatch.setattr(CIFAR10, "_torchvision_dataset", lambda self, split, download=False: fake_ds)
    src = CIFAR10(CIFAR10.Config(), tmp_path, False)
    data = src.load("train")
    assert data.images.shape == (5, 3, 32, 32)
    assert data.images.is_contiguous()
    assert torch.equal(data.images, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    assert data.labels.tolist() == [0, 1, 2, 3, 9]
    assert data.labels.dtype == torch.int64
    assert "layout=torchvision" in (src.fingerprint("train") or "")


def test_stl10_binary_layout_and_resize(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for split, n in (("train", 4), ("test", 2))}
    for split, array in images.items():
        array.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # STL stores columns first
        np.arange(1, len(array) + 1, dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    data = STL10(STL10.Config(), tmp_path, False).load("train")
    assert torch.equal(data.images, torch.from_numpy(images["train"]))
    assert data.labels.tolist() == [0, 1, 2, 3]
    small = STL10(STL10.Config(image_size=32), tmp_path, False).load("test")
    assert small.images.shape == (2, 3, 32, 32)
    assert small.images.dtype == torch.uint8
    mean_96 = torch.from_numpy(images["test"]).float().mean()
    assert abs(small.images.float().mean() - mean_96) < 2  # antialiased: the average is preserved


# --------------------------------------------------------------------------------------------------
# missing data
# --------------------------------------------------------------------------------------------------


def test_missing_data_root_says_how_to_fix() -> None:
    with pytest.raises(UserError, match="KDBENCH_DATA_ROOT") as info:
        CIFAR10(CIFAR10.Config(), None, False).load("train")
    assert "data.root" in str(info.value)


def test_empty_data_folder_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="KDBENCH_DATA_ROOT") as info:
        load_split_cached(CIFAR100(CIFAR100.Config(), tmp_path / "cifar100", False), "test", tmp_path / "cache")
    message = str(info.value)
    assert "cifar-100-python/" in message
    assert "data.download = true" in message
    assert "\n" not in message


def test_failed_download_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match=r"download into .* failed .*KDBENCH_DATA_ROOT"):
        CIFAR10(CIFAR10.Config(), tmp_path / "cifar10", True).load("train")


# --------------------------------------------------------------------------------------------------
# the real offline CIFAR-10 copy
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10_source() -> CIFAR10:
    root = data_root()
    if root is None:
        pytest.skip("offline CIFAR-10 not found: set KDBENCH_DATA_ROOT to a folder holding cifar10/")
    return CIFAR10(CIFAR10.Config(), root / "cifar10", False)


@pytest.fixture(scope="module")
def cifar10_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cifar10-cache")


def test_cifar10_test_split_from_offline_copy(cifar10_source: CIFAR10, cifar10_cache: Path) -> None:
    data = load_split_cached(cifar10_source, "test", cifar10_cache)
    assert data.images.shape == (10000, 3, 32, 32)
    assert data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    mean = data.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(cifar10_source.info().mean), atol=0.01)
    again = load_split_cached(cifar10_source, "test", cifar10_cache)  # from the cache file
    assert torch.equal(again.images, data.images)
    assert torch.equal(again.labels, data.labels)


@pytest.mark.slow
def test_cifar10_train_split_from_offline_copy(cifar10_source: CIFAR10, cifar10_cache: Path) -> None:
    data = load_split_cached(cifar10_source, "train", cifar10_cache)
    assert data.images.shape == (50000, 3, 32, 32)
    assert torch.bincount(data.labels).tolist() == [5000] * 10
