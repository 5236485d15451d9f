"""Helpers for the sources distributed as multi-page TIFF stacks (ISBI 2012/2013, EPFL)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from core.datasets.base import DatasetSpec, RawData, SourcePlan
from core.datasets.io import binary_mask, compact_labels, distinct_values, read_stack
from core.errors import DatasetError

# labels stack (N, H, W), its path -> masks, instances, checks
TargetsFromLabels = Callable[[np.ndarray, Path], tuple[list[np.ndarray], list[np.ndarray], list[str]]]


def require_root(spec: DatasetSpec, root: Path | None, subfolders: tuple[str, ...] = ()) -> Path:
    """``root`` as a Path, or a DatasetError saying which layout was expected.

    ``subfolders`` (e.g. ``("images", "masks")``) must exist under it too.
    """
    if root is None:
        raise DatasetError(f"dataset {spec.name!r} needs a root folder (--root). Expected layout: {spec.layout}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found (dataset {spec.name!r}; expected layout: {spec.layout})")
    for name in subfolders:
        if not (root / name).is_dir():
            raise DatasetError(f"{root / name}: folder not found. Expected layout: {spec.layout}")
    return root


def stack_plan(spec: DatasetSpec, root: Path | None, files: list[str]) -> SourcePlan:
    """Plan reading the named stack files under ``root``; all must exist."""
    root = require_root(spec, root)
    paths = [root / name for name in files]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise DatasetError(
            f"{root}: missing {', '.join(missing)} for dataset {spec.name!r}. Expected layout: {spec.layout}"
        )
    return SourcePlan(files=paths, items=paths)


def slice_names(path: Path, count: int) -> list[str]:
    """``train-volume[00]``, ``train-volume[01]``, ... (at least two digits)."""
    width = max(2, len(str(count - 1)))
    return [f"{path.stem}[{index:0{width}d}]" for index in range(count)]


def image_stack(path: Path) -> list[np.ndarray]:
    """Pages of an image stack as (H, W, 1) views in their native dtype."""
    stack = read_stack(path)
    if stack.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"{path}: image stack of type {stack.dtype}; expected 8- or 16-bit unsigned pages")
    return [page[:, :, None] for page in stack]


def binary_targets(connectivity: int) -> TargetsFromLabels:
    """Targets from a binary label stack: mask = the larger value, instances = connected components."""

    def targets(labels: np.ndarray, path: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        from skimage.measure import label as connected_components

        values = distinct_values(labels)
        if len(values) > 2 or np.issubdtype(labels.dtype, np.floating):
            shown = ", ".join(str(value) for value in values[:6]) + (", ..." if len(values) > 6 else "")
            raise DatasetError(
                f"{path}: labels are not binary: {len(values)} distinct values ({shown}); expected two, e.g. 0 and 255"
            )
        masks = list(binary_mask(labels, values))
        instances = [compact_labels(connected_components(mask, connectivity=connectivity)) for mask in masks]
        return masks, instances, [f"labels binary (values {[int(v) for v in values]})"]

    return targets


def read_stack_pair(
    image_path: Path, label_path: Path | None, targets: TargetsFromLabels | None = None
) -> RawData:
    """Read an image stack and (optionally) its label stack, checking they match page for page."""
    images = image_stack(image_path)
    names = slice_names(image_path, len(images))
    checks = [f"{image_path.name}: {len(images)} pages of {images[0].shape[0]}x{images[0].shape[1]} {images[0].dtype}"]
    if label_path is None or targets is None:
        return RawData(images=images, masks=None, instances=None, names=names, checks=checks)
    labels = read_stack(label_path)
    if len(labels) != len(images):
        raise DatasetError(
            f"{label_path}: {len(labels)} pages but {image_path.name} has {len(images)}; the stacks must match page for page"
        )
    if labels.shape[1:] != images[0].shape[:2]:
        raise DatasetError(
            f"{label_path}: pages are {labels.shape[1]}x{labels.shape[2]} but {image_path.name} pages are "
            f"{images[0].shape[0]}x{images[0].shape[1]} (image/mask size mismatch; sizes are height x width)"
        )
    masks, instances, label_checks = targets(labels, label_path)
    checks += [f"page counts match ({len(images)} images, {len(labels)} labels)", "image and label sizes match"]
    return RawData(images=images, masks=masks, instances=instances, names=names, checks=checks + label_checks)
