"""Datasets: sources (registered through entry points), the decode cache and the on-device loader."""

from kdbench.data.base import DatasetInfo, DatasetSource, Split, SplitData

__all__ = ["DatasetInfo", "DatasetSource", "Split", "SplitData"]
