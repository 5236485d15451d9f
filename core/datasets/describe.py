"""``describe_dataset``: the figures ``python -m core datasets describe`` prints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets.base import Dataset
from core.datasets.registry import get_spec, load_dataset
from core.errors import DatasetError


def split_summary(dataset: Dataset) -> dict[str, Any]:
    """Counts, sizes and label statistics of one loaded split.

    ``foreground_fraction`` is positive pixels over all pixels of the split (None without masks);
    ``n_instances`` is the total number of instances over its images (None if the source has none).
    """
    masks = dataset.raw_masks()
    instances = dataset.raw_instances()
    n_pixels = dataset.pixel_count
    foreground = None if masks is None else float(sum(int(np.count_nonzero(mask)) for mask in masks) / n_pixels)
    per_image = None
    if instances is not None:
        # Ids are 1..N per image after loading, but a resize can drop small objects: count what is left.
        per_image = [int(np.count_nonzero(np.bincount(labels.ravel())[1:])) for labels in instances]
    return {
        "n_images": len(dataset),
        "shapes": [list(shape) for shape in dataset.shapes],
        "dtype": ", ".join(dataset.dtypes),
        "channels": dataset.channels,
        "labelled": masks is not None,
        "foreground_fraction": None if foreground is None else round(foreground, 6),
        "n_instances": None if per_image is None else sum(per_image),
        "instances_per_image": None if per_image is None else round(sum(per_image) / len(per_image), 3),
        "from_cache": dataset.from_cache,
        "checks": dataset.checks,
        "warnings": dataset.warnings,
    }


def describe_dataset(
    name: str,
    root: str | Path | None = None,
    size: int | tuple[int, int] | None = None,
    split: str = "train",
    use_cache: bool = True,
) -> dict[str, Any]:
    """Load a dataset and summarise it (the object ``datasets describe --json`` prints).

    Top-level figures are for ``split`` (default "train"); ``splits`` maps every split of the
    dataset to its own summary. A held-out split whose files are absent is reported as
    ``{"available": false, "error": ...}`` rather than failing the whole description.

    Returns
    -------
    dict with keys name, title, root, split, size, kind, ordering, positive_class, n_images,
    shapes, dtype, channels, labelled, foreground_fraction, n_instances, instances_per_image,
    checks, warnings, from_cache, load_seconds, paper_size, splits. ``ordering`` is ``"stack"`` (ordered
    slices: runs validate on a contiguous block with a gap) or ``"independent"``.
    """
    spec = get_spec(name)
    started = time.perf_counter()
    dataset = load_dataset(name, root, split=split, size=size, use_cache=use_cache)
    seconds = time.perf_counter() - started
    summary = split_summary(dataset)
    splits: dict[str, Any] = {split: {key: value for key, value in summary.items() if key not in ("checks", "warnings")}}
    for other in spec.splits:
        if other == split:
            continue
        try:
            splits[other] = split_summary(load_dataset(name, root, split=other, size=size, use_cache=use_cache))
            splits[other].pop("checks")
            splits[other].pop("warnings")
        except DatasetError as error:
            if split == "train" and other != "train":
                splits[other] = {"available": False, "error": str(error)}
            else:
                raise
    return {
        "name": spec.name,
        "title": spec.title,
        "root": None if dataset.root is None else str(dataset.root),
        "split": split,
        "size": None if dataset.size is None else list(dataset.size),
        "kind": spec.kind,
        "ordering": spec.ordering,
        "positive_class": spec.positive_class,
        **summary,
        "load_seconds": round(seconds, 3),
        "paper_size": None if spec.paper_size is None else list(spec.paper_size),
        "splits": splits,
    }
