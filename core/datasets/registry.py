"""The named datasets and ``load_dataset``: plan -> cache or read -> resize -> validate -> Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.datasets import dsb2018, epfl, folder, isbi, ncmir, synthetic
from core.datasets.base import Dataset, DatasetSpec, RawData, Source
from core.datasets.cache import entry_path, load_entry, save_entry
from core.errors import DatasetError

# Synthetic sets first: they are the app's defaults and need no files.
SOURCES: dict[str, Source] = {
    source.spec.name: source
    for module in (synthetic, isbi, dsb2018, epfl, ncmir, folder)
    for source in module.SOURCES
}


def list_datasets() -> list[DatasetSpec]:
    """Specs of every registered dataset, built-in synthetic sets first."""
    return [source.spec for source in SOURCES.values()]


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(SOURCES)}")
    return SOURCES[name]


def get_spec(name: str) -> DatasetSpec:
    """The spec of a named dataset; DatasetError listing the known names if unknown."""
    return get_source(name).spec


def normalize_size(size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``None``, ``N`` or ``(H, W)`` -> ``None`` or ``(H, W)`` of positive integers."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(side, (int, np.integer)) and not isinstance(side, bool) for side in size
    ):
        pair = (int(size[0]), int(size[1]))
    else:
        raise DatasetError(f"size must be None, an integer or a (height, width) pair of integers, got {size!r}")
    if min(pair) < 1:
        raise DatasetError(f"size must be positive, got {size!r}")
    return pair


def resize_raw(raw: RawData, size: tuple[int, int]) -> RawData:
    """Resize every sample to ``size``: images bilinear with anti-aliasing, masks and instances nearest.

    Images keep their native dtype (rounded back to integers), so resized sets stay small.
    """
    from skimage.transform import resize

    def resize_image(image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == size:
            return image
        out = resize(image, size + image.shape[2:], order=1, anti_aliasing=True, preserve_range=True)
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(image.dtype)

    def resize_labels(labels: np.ndarray) -> np.ndarray:
        if labels.shape == size:
            return labels
        out = resize(labels, size, order=0, anti_aliasing=False, preserve_range=True)
        return out.astype(labels.dtype)

    return RawData(
        images=[resize_image(image) for image in raw.images],
        masks=None if raw.masks is None else [resize_labels(mask) for mask in raw.masks],
        instances=None if raw.instances is None else [resize_labels(labels) for labels in raw.instances],
        names=raw.names,
        checks=raw.checks + [f"resized to {size[0]}x{size[1]} (images bilinear, anti-aliased; labels nearest)"],
    )


def unify_channels(raw: RawData) -> RawData:
    """Give every image the same channel count: grey images become RGB when the set mixes both."""
    counts = {image.shape[2] for image in raw.images}
    if counts == {1, 3}:
        grey = sum(image.shape[2] == 1 for image in raw.images)
        raw.images = [np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image for image in raw.images]
        raw.checks = raw.checks + [f"channels consistent: 3 ({grey} grey images converted to RGB)"]
    elif len(counts) == 1:
        raw.checks = raw.checks + [f"channels consistent: {counts.pop()}"]
    else:
        raise DatasetError(f"images have channel counts {sorted(counts)}; expected all grey or all colour")
    return raw


def validate_raw(raw: RawData, where: str) -> None:
    """Last consistency checks on what a loader returned (loaders check files as they read them)."""
    if not raw.images:
        raise DatasetError(f"{where}: no images found")
    for field_name, labels in (("mask", raw.masks), ("instances", raw.instances)):
        if labels is None:
            continue
        for image, label, name in zip(raw.images, labels, raw.names):
            if label.shape != image.shape[:2]:
                raise DatasetError(
                    f"{where}: {name}: {field_name} is {label.shape[0]}x{label.shape[1]} but the image is "
                    f"{image.shape[0]}x{image.shape[1]} (image/mask size mismatch; sizes are height x width)"
                )
    if raw.masks is not None:
        raw.checks = raw.checks + [f"every image has a mask of the same size ({len(raw.images)} images)"]


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    size: int | tuple[int, int] | None = None,
    use_cache: bool = True,
) -> Dataset:
    """Load one split of a named dataset into memory.

    Parameters
    ----------
    name : str
        A registered name (see ``list_datasets()``), e.g. ``"isbi2012"`` or ``"synthetic-nuclei"``.
    root : str or Path, optional
        Folder in the source's original layout (``get_spec(name).layout``); ignored by the
        built-in synthetic sets.
    split : str
        ``"train"`` (the labelled pool) or an official held-out split such as ``"test"``.
    size : int or (height, width), optional
        Resize every sample on load (images bilinear with anti-aliasing, masks and instances
        nearest). Default: native resolution.
    use_cache : bool
        Serve decoded arrays from ``cache_dir()/datasets/`` and store them there.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Unknown name or split, missing root, files or masks, corrupt files, inconsistent data.
    """
    source = get_source(name)
    spec = source.spec
    if split not in spec.splits:
        raise DatasetError(f"dataset {name!r} has no split {split!r}; its splits are {', '.join(spec.splits)}")
    size = normalize_size(size)
    root_path = Path(root) if root is not None and spec.needs_root else None
    plan = source.plan(root_path, split)

    entry = entry_path(name, split, size, plan.files, source.version) if use_cache else None
    raw = load_entry(entry) if entry is not None else None
    from_cache = raw is not None
    if raw is None:
        # A resized load starts from the cached native arrays when there are some: no decoding.
        native_entry = entry_path(name, split, None, plan.files, source.version) if use_cache and size else None
        raw = load_entry(native_entry) if native_entry is not None else None
        if raw is None:
            raw = source.read(plan)
            validate_raw(raw, f"{name}/{split}" + (f" at {root_path}" if root_path is not None else ""))
            raw = unify_channels(raw)
        if size is not None:
            raw = resize_raw(raw, size)
        if entry is not None:
            save_entry(entry, raw)
    return Dataset(spec, root_path, split, size, raw, from_cache=from_cache)
