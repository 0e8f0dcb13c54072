"""The README tells an outside user how to get the data before it mentions this workspace's copy
(issue 18, point 6), and what it says matches what the dataset sources read."""

from __future__ import annotations

import re

from kdbench._registry import DATASETS

from .conftest import REPO

README = (REPO / "README.md").read_text()


def test_download_and_torchvision_files_come_before_the_offline_copy():
    data = README[README.index("### Data") : README.index("### Where runs go")]
    assert data.index("data.download=true") < data.index("../shared/data")
    assert data.index("Place torchvision's files yourself") < data.index("../shared/data")
    assert "--teacher-set data.download=true" in data  # --set alone would not reach the teacher recipe


def test_the_folders_the_readme_names_are_the_ones_the_sources_read():
    data = README[README.index("### Data") : README.index("### Where runs go")]
    for dataset in ("cifar10", "cifar100", "stl10"):
        folder = DATASETS.get(dataset).tv_folder
        assert f"{folder}/" in data, (dataset, folder)
        assert f"`{dataset}/`" in data or f"{dataset}/" in data
    assert re.search(r"KDBENCH_DATA_ROOT/cifar10/", data)


def test_readme_commands_name_real_options():
    from kdbench.cli import _parser

    run_help = _parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]
    for flag in ("--teacher-set", "--device", "--dry-run", "--tensorboard", "--runs-dir"):
        assert flag in README and flag in run_help
