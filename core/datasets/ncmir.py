"""NCMIR mitochondria in the layout CDeep3M ships.

``training/images/images.NNN.png`` with ``training/labels/mitos_3D.NNN.png`` (palette PNGs,
indices {0, 1}, 1 = mitochondrion), and ``validation/`` alike. ``validation/`` is exposed as
the "test" split: an official held-out set that is never trained on (the training/validation
division for model selection comes from :func:`~core.datasets.split` on "train").
Instances are connected components (8-neighbour).
"""

from __future__ import annotations

from pathlib import Path

from core.datasets.base import DatasetSpec, RawData, Source, SourcePlan
from core.datasets.folder import read_pairs
from core.datasets.stacks import require_root
from core.errors import DatasetError

NCMIR = DatasetSpec(
    name="ncmir",
    title="NCMIR mitochondria (CDeep3M sample)",
    description="Serial block-face EM slices, 1024x1024, with mitochondria labelled; validation/ is an "
    "official held-out split (\"test\" here).",
    positive_class="mitochondrion",
    kind="objects",
    splits=("train", "test"),
    labelled_splits=("train", "test"),
    needs_root=True,
    layout="training/images/images.NNN.png with training/labels/mitos_3D.NNN.png (palette PNGs, values "
    "{0,1}, 1 = mitochondrion), and validation/images + validation/labels alike (the \"test\" split).",
    paper_size=(512, 512),
    ordering="stack",
)

_FOLDERS = {"train": "training", "test": "validation"}


def _slice_number(path: Path, prefix: str) -> str | None:
    """``images.007.png`` -> ``"007"`` for prefix ``images``; None for other names."""
    stem = path.stem
    if not stem.startswith(prefix + "."):
        return None
    return stem[len(prefix) + 1:]


def _slice_order(path: Path) -> tuple[int, str]:
    number = _slice_number(path, "images") or ""
    return (int(number), number) if number.isdigit() else (1 << 62, number)


def _plan(root: Path | None, split: str) -> SourcePlan:
    base = require_root(NCMIR, root) / _FOLDERS[split]
    images_dir, labels_dir = base / "images", base / "labels"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder not found (split {split!r}). Expected layout: {NCMIR.layout}")
    images = {}
    # Slice order is physical order (validation is a contiguous block), so sort by the slice
    # number as a number: images.10.png comes after images.9.png even without zero padding.
    for path in sorted(images_dir.glob("images.*.png"), key=_slice_order):
        images[_slice_number(path, "images")] = path
    if not images:
        raise DatasetError(f"{images_dir}: empty folder, no images.NNN.png files. Expected layout: {NCMIR.layout}")
    labels = {_slice_number(path, "mitos_3D"): path for path in labels_dir.glob("mitos_3D.*.png")}
    pairs = []
    for number, image in images.items():
        if number not in labels:
            raise DatasetError(f"{image}: missing mask for image (expected {labels_dir / f'mitos_3D.{number}.png'})")
        pairs.append((image.stem, image, labels[number]))
    return SourcePlan(files=[path for _, image, label in pairs for path in (image, label)], items=pairs)


def _read(plan: SourcePlan) -> RawData:
    raw = read_pairs(plan.items, connectivity=NCMIR.connectivity)
    raw.checks.insert(0, f"layout: {len(plan.items)} images.NNN.png matched with labels/mitos_3D.NNN.png")
    return raw


SOURCES = [Source(NCMIR, _plan, _read)]
