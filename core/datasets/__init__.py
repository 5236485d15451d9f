"""Datasets for U-Net Lab: named loaders, built-in synthetic sets, a decoded-array cache, splits.

>>> from core.datasets import load_dataset, split
>>> dataset = load_dataset("synthetic-nuclei")            # no files needed
>>> sample = dataset[0]                                    # Sample(image, mask, instances, name)
>>> sample.image.shape, sample.image.dtype, sample.mask.dtype
((256, 256, 1), dtype('float32'), dtype('bool'))
>>> parts = split(dataset, train_fraction=0.5, seed=0)     # nested across fractions, fixed validation

Registered names: ``synthetic-nuclei``, ``synthetic-membranes``, ``synthetic-mitochondria``,
``isbi2012``, ``isbi2013``, ``dsb2018``, ``epfl``, ``ncmir``, ``folder``; ``get_spec(name).layout``
describes the files each expects.
"""

from __future__ import annotations

from core.datasets.base import Dataset, DatasetSpec, Sample
from core.datasets.describe import describe_dataset
from core.datasets.io import read_image
from core.datasets.registry import get_spec, list_datasets, load_dataset
from core.datasets.split import Split, split

__all__ = [
    "Dataset",
    "DatasetSpec",
    "Sample",
    "Split",
    "describe_dataset",
    "get_spec",
    "list_datasets",
    "load_dataset",
    "read_image",
    "split",
]
