"""The named datasets and ``load_dataset``: plan -> cache or read -> resize -> validate -> Dataset."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from core.datasets import cellpose, dsb2018, epfl, folder, isbi, ncmir, nnunet, synthetic
from core.datasets.base import Dataset, DatasetSpec, RawData, Source
from core.datasets.cache import entry_path, load_entry, save_entry
from core.errors import DatasetError

# Synthetic sets first: they are the app's defaults and need no files.
SOURCES: dict[str, Source] = {
    source.spec.name: source
    for module in (synthetic, isbi, dsb2018, epfl, ncmir, folder, nnunet, cellpose)
    for source in module.SOURCES
}


#: Datasets handed to this process in memory rather than read from files, by
#: :func:`provided_key`; see :func:`provided_dataset`.
_PROVIDED: dict[tuple, RawData] = {}


def provided_key(name: str, root: str | Path | None, split: str,
                 size: int | tuple[int, int] | None) -> tuple:
    """What a :func:`load_dataset` call asks for: (name, root as text or None, split, (H, W) or None)."""
    return (name, None if root is None else str(root), split, normalize_size(size))


@contextmanager
def provided_dataset(name: str, root: str | Path | None, split: str, size: int | tuple[int, int] | None,
                     raw: RawData) -> Iterator[None]:
    """While inside, ``load_dataset(name, root, split, size)`` returns ``raw`` without touching
    any file (a Ray worker trains on the arrays its launcher loaded and sent; see
    :mod:`core.ray_executor`). ``raw`` is what :meth:`Dataset.raw_data` gave for that load.
    """
    key = provided_key(name, root, split, size)
    _PROVIDED[key] = raw
    try:
        yield
    finally:
        _PROVIDED.pop(key, None)


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


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image resized to ``size`` (height, width): bilinear with anti-aliasing, in its own dtype.

    Integer images are rounded back to their dtype, so a resized set stays small; prediction
    at a run's training scale (:func:`core.inference.predict_image`) resizes the same way, so
    a file predicted there meets the network exactly as the loader's resized image did.
    """
    from skimage.transform import resize

    size = (int(size[0]), int(size[1]))
    if image.shape[:2] == size:
        return image
    out = resize(image, size + image.shape[2:], order=1, anti_aliasing=True, preserve_range=True)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype)


def resize_raw(raw: RawData, size: tuple[int, int]) -> RawData:
    """Resize every sample to ``size``: images bilinear with anti-aliasing, masks and instances nearest.

    Images keep their native dtype (rounded back to integers), so resized sets stay small.
    """
    from skimage.transform import resize

    def resize_labels(labels: np.ndarray) -> np.ndarray:
        if labels.shape == size:
            return labels
        out = resize(labels, size, order=0, anti_aliasing=False, preserve_range=True)
        return out.astype(labels.dtype)

    return RawData(
        images=[resize_image(image, size) for image in raw.images],
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
    raw.warnings = raw.warnings + content_warnings(raw)


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def content_warnings(raw: RawData) -> list[str]:
    """What loads but deserves a look: tiny or constant images, masks that are all empty or all full."""
    found = []
    tiny = [name for image, name in zip(raw.images, raw.names) if min(image.shape[:2]) < 16]
    if tiny:
        found.append(f"{len(tiny)} image(s) smaller than 16 pixels on a side ({_listing(tiny)}): too small "
                     "for a U-Net to see context; training patches shrink to them")
    constant = [name for image, name in zip(raw.images, raw.names) if image.size and image.min() == image.max()]
    if constant:
        found.append(f"{len(constant)} constant image(s), every pixel the same value ({_listing(constant)}): "
                     "nothing to segment")
    if raw.masks is not None:
        empty = [name for mask, name in zip(raw.masks, raw.names) if not mask.any()]
        full = [name for mask, name in zip(raw.masks, raw.names) if mask.size and mask.all()]
        if empty:
            found.append(f"{len(empty)} of {len(raw.masks)} mask(s) are all background ({_listing(empty)})"
                         + (": no image has a positive pixel, so nothing can be learnt" if len(empty) == len(raw.masks)
                            else ""))
        if full:
            found.append(f"{len(full)} of {len(raw.masks)} mask(s) are all foreground ({_listing(full)}): check the "
                         "mask convention (is 0 the background?)")
    return found


def with_warnings(step):
    """``step()`` and the messages of every :class:`DatasetWarning` it raised (in order, once each)."""
    import warnings

    from core.errors import DatasetWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        result = step()
    return result, list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, DatasetWarning)))


def read_with_warnings(source: Source, plan) -> RawData:
    """``source.read(plan)``, with the :class:`DatasetWarning` s raised while reading kept in ``warnings``
    (stored with the cached arrays, so a cached load shows them too)."""
    raw, found = with_warnings(lambda: source.read(plan))
    raw.warnings = raw.warnings + found
    return raw


def _cache_failed(error: OSError) -> str:
    return (f"the dataset cache could not be written ({error.strerror or error}); the data loaded and "
            "training works, but the next load decodes the files again")


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
    provided = _PROVIDED.get(provided_key(name, root, split, size))
    if provided is not None:
        return Dataset(spec, root_path, split, size, provided, from_cache=True)
    plan, plan_warnings = with_warnings(lambda: source.plan(root_path, split))

    cache_problem = None
    try:  # the cache is only an optimisation: a cache folder that cannot be made must not stop a load
        entry = entry_path(name, split, size, plan.files, source.version) if use_cache else None
        native_entry = entry_path(name, split, None, plan.files, source.version) if use_cache and size else None
    except OSError as error:
        entry = native_entry = None
        cache_problem = _cache_failed(error)
    raw = load_entry(entry) if entry is not None else None
    from_cache = raw is not None
    if raw is None:
        # A resized load starts from the cached native arrays when there are some: no decoding.
        raw = load_entry(native_entry) if native_entry is not None else None
        if raw is None:
            raw = read_with_warnings(source, plan)
            validate_raw(raw, f"{name}/{split}" + (f" at {root_path}" if root_path is not None else ""))
            raw = unify_channels(raw)
        if size is not None:
            raw = resize_raw(raw, size)
        if entry is not None:
            try:
                save_entry(entry, raw)
            except OSError as error:
                cache_problem = _cache_failed(error)
    dataset = Dataset(spec, root_path, split, size, raw, from_cache=from_cache)
    dataset.warnings = plan_warnings + dataset.warnings  # found while listing the files: on every load
    if cache_problem:
        dataset.warnings.append(cache_problem)
    return dataset
