"""Cellpose's training layout (``cellpose``): ``NAME.png`` with ``NAME_masks.png`` beside it.

Cellpose (Stringer et al., 2021) trains from one folder holding each image and its instance-label
mask, named ``NAME_masks.*`` (its ``--mask_filter``); a ``test/`` subfolder alike is the official
test split here. ``_flows``, ``_cp_masks``, ``_cp_outlines`` and ``_seg.npy`` files that Cellpose
writes are ignored. Masks are instance labels (0 = background); a mask with two values is read as
binary, its objects the connected components. ``unetlab.json`` chooses the channel / plane of
multi-dimensional files, as in the ``folder`` dataset.
"""

from __future__ import annotations

from pathlib import Path

from core.datasets.base import DatasetSpec, RawData, Source, SourcePlan
from core.datasets.folder import image_files, read_pairs
from core.datasets.ome import PLANE_FILE, read_plane_file, strip_suffix
from core.datasets.stacks import require_root
from core.errors import DatasetError

MASK_SUFFIX = "_masks"
#: Files Cellpose writes beside the images that are neither images nor training masks.
IGNORED_SUFFIXES = ("_flows", "_cp_masks", "_cp_outlines", "_outlines", "_seg")

CELLPOSE = DatasetSpec(
    name="cellpose",
    title="A Cellpose training folder (NAME.png + NAME_masks.png)",
    description="Cellpose's layout: each image beside its instance-label mask NAME_masks.*; test/ alike is the "
                "test split.",
    positive_class="cell",
    kind="objects",
    splits=("train", "test"),
    labelled_splits=("train", "test"),
    needs_root=True,
    layout="a folder of images NAME.(png|tif|jpg) each with NAME_masks.(png|tif) beside it (instance labels, "
           "0 = background); an optional test/ subfolder alike is the test split.",
    paper_size=None,
    ordering="independent",
)


def _plan(root: Path | None, split: str) -> SourcePlan:
    root = require_root(CELLPOSE, root)
    folder = root / "test" if split == "test" else root
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found (the test split of a Cellpose folder is its test/ subfolder)")
    files = image_files(folder)
    stems = {strip_suffix(path.name): path for path in files}
    masks = {stem[: -len(MASK_SUFFIX)]: path for stem, path in stems.items() if stem.endswith(MASK_SUFFIX)}
    images = {stem: path for stem, path in stems.items()
              if not stem.endswith(MASK_SUFFIX) and not stem.endswith(IGNORED_SUFFIXES)}
    if not images:
        raise DatasetError(f"{folder}: no images (NAME.png with NAME{MASK_SUFFIX}.png beside it)")
    pairs = []
    for stem, image in sorted(images.items()):
        if stem not in masks:
            raise DatasetError(f"{image}: missing mask for image (expected {folder / stem}{MASK_SUFFIX}.png/.tif)")
        pairs.append((stem, image, masks[stem]))
    plane = read_plane_file(root)
    paths = [path for _, image, mask in pairs for path in (image, mask)]
    return SourcePlan(files=paths + ([root / PLANE_FILE] if plane else []), items=(pairs, plane))


def _read(plan: SourcePlan) -> RawData:
    pairs, plane = plan.items
    raw = read_pairs(pairs, connectivity=CELLPOSE.connectivity, plane=plane)
    raw.checks.insert(0, f"layout: {len(pairs)} images with NAME{MASK_SUFFIX} masks beside them")
    return raw


SOURCES = [Source(CELLPOSE, _plan, _read)]
