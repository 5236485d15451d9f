"""EPFL CVLab hippocampus mitochondria (Lucchi et al.; labels from the corrected "Lucchi++" release)."""

from __future__ import annotations

from pathlib import Path

from core.datasets.base import DatasetSpec, RawData, Source, SourcePlan
from core.datasets.stacks import binary_targets, read_stack_pair, stack_plan

EPFL = DatasetSpec(
    name="epfl",
    title="EPFL hippocampus mitochondria (Lucchi++)",
    description="FIB-SEM slices of mouse hippocampus, 768x1024, with mitochondria labelled; the "
    "official testing stack is a separate split for evaluation, never trained on.",
    positive_class="mitochondrion",
    kind="objects",
    splits=("train", "test"),
    labelled_splits=("train", "test"),
    needs_root=True,
    layout="a folder with training.tif + training_groundtruth.tif and testing.tif + "
    "testing_groundtruth.tif (multi-page TIFF stacks of 768x1024 uint8 pages; labels 255 = mitochondrion).",
    paper_size=(512, 512),
    ordering="stack",
)

_FILES = {"train": ["training.tif", "training_groundtruth.tif"], "test": ["testing.tif", "testing_groundtruth.tif"]}


def _plan(root: Path | None, split: str) -> SourcePlan:
    return stack_plan(EPFL, root, _FILES[split])


def _read(plan: SourcePlan) -> RawData:
    image_path, label_path = plan.items
    return read_stack_pair(image_path, label_path, binary_targets(connectivity=EPFL.connectivity))


SOURCES = [Source(EPFL, _plan, _read)]
