"""ISBI 2012 (Drosophila ssTEM membranes) and ISBI 2013 / SNEMI3D (mouse cortex neurites).

Both targets are the cell interior (positive class), the membranes being the background.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.datasets.base import DatasetSpec, RawData, Source, SourcePlan
from core.datasets.io import compact_labels
from core.datasets.stacks import binary_targets, read_stack_pair, stack_plan
from core.errors import DatasetError

ISBI2012 = DatasetSpec(
    name="isbi2012",
    title="ISBI 2012 EM segmentation (Drosophila ssTEM)",
    description="30 serial-section TEM slices of the Drosophila ventral nerve cord, 512x512, with "
    "cell-interior/membrane labels; 30 unlabelled test slices. The U-Net paper's first benchmark.",
    positive_class="cell interior",
    kind="membrane",
    splits=("train", "test"),
    labelled_splits=("train",),
    needs_root=True,
    layout="a folder with train-volume.tif and train-labels.tif (multi-page TIFF stacks, 30 pages of "
    "512x512 uint8; labels 255 = cell interior, 0 = membrane) and, for the test split, test-volume.tif.",
    paper_size=(512, 512),
    ordering="stack",
)

ISBI2013 = DatasetSpec(
    name="isbi2013",
    title="ISBI 2013 SNEMI3D (mouse cortex neurites)",
    description="100 serial-section EM slices of mouse cortex, 1024x1024, with dense neurite ids; "
    "the target is the neurite interior, membranes are where neighbouring ids differ.",
    positive_class="cell interior",
    kind="membrane",
    splits=("train", "test"),
    labelled_splits=("train",),
    needs_root=True,
    layout="a folder with train-input.tif (multi-page TIFF, uint8 pages) and train-labels.tif "
    "(same page count, uint32 neurite ids) and, for the test split, test-input.tif.",
    paper_size=(512, 512),
    ordering="stack",
)


def _isbi2012_plan(root: Path | None, split: str) -> SourcePlan:
    files = ["train-volume.tif", "train-labels.tif"] if split == "train" else ["test-volume.tif"]
    return stack_plan(ISBI2012, root, files)


def _isbi2012_read(plan: SourcePlan) -> RawData:
    paths = plan.items
    if len(paths) == 1:
        return read_stack_pair(paths[0], None)
    # 4-connectivity (a membrane set): interiors touching diagonally across a membrane stay separate cells.
    return read_stack_pair(paths[0], paths[1], binary_targets(connectivity=ISBI2012.connectivity))


def neurite_targets(labels: np.ndarray, path: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """SNEMI3D ids -> interior masks and instances, slice by slice.

    A pixel is membrane where any of its 4-neighbours in the slice has another id
    (``find_boundaries(mode="thick")``, so a boundary is two pixels wide); id 0, where
    present, is background too. Instances are the ids on interior pixels, renumbered
    1..N per slice in their original order.
    """
    from skimage.segmentation import find_boundaries, relabel_sequential

    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: neurite labels must be integer ids, got {labels.dtype}")
    masks, instances = [], []
    for ids in labels:
        interior = (ids > 0) & ~find_boundaries(ids, connectivity=1, mode="thick")
        masks.append(interior)
        instances.append(compact_labels(relabel_sequential(np.where(interior, ids, 0).astype(np.int64))[0]))
    return masks, instances, ["labels are neurite ids; membranes derived where neighbouring ids differ"]


def _isbi2013_plan(root: Path | None, split: str) -> SourcePlan:
    files = ["train-input.tif", "train-labels.tif"] if split == "train" else ["test-input.tif"]
    return stack_plan(ISBI2013, root, files)


def _isbi2013_read(plan: SourcePlan) -> RawData:
    paths = plan.items
    if len(paths) == 1:
        return read_stack_pair(paths[0], None)
    return read_stack_pair(paths[0], paths[1], neurite_targets)


SOURCES = [
    Source(ISBI2012, _isbi2012_plan, _isbi2012_read),
    Source(ISBI2013, _isbi2013_plan, _isbi2013_read),
]
