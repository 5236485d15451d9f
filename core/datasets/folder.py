"""Any ``images/`` + ``masks/`` folder pair, matched by file stem (the ``folder`` dataset).

Images: PNG, TIFF or JPEG; 8/16-bit; grey, RGB or RGBA (alpha dropped). If a folder mixes
grey and colour images, the grey ones are converted to RGB so every image has 3 channels.
Masks: binary (two values, e.g. 0/255 or 0/1; the larger is the positive class) -> instances
are its connected components (8-neighbour); or a label image (more than two values) ->
instances are its labels, renumbered 1..N, and the mask is ``labels > 0``. JPEG masks are
lossy, so they are read as binary, thresholded at mid-range. Masks without an image are
ignored (and counted in ``checks``).

OME-TIFF (``.ome.tif``) and OME-Zarr (``NAME.ome.zarr`` / ``NAME.zarr`` folders) images and masks
are read too, one 2-D plane each: ``unetlab.json`` in the dataset folder names the channel, z-plane
and time point (``{"channel": 1, "z": 4}``; default: every channel of a grey or colour image, else
channel 0, z-plane 0 and time point 0, with a warning). Names match without ``.ome.tif``/``.ome.zarr``.

Images are independent (``ordering="independent"``): runs split them at random, unless the run
sets ``group_pattern``, a regular expression on the file stem whose first capture group names
the image's group (e.g. ``^(slide[^_]+)_`` for ``slideA_01.png``); then whole groups go to
validation or training (see :mod:`core.datasets.split`), never a group split across both.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.datasets.base import DatasetSpec, RawData, Source, SourcePlan
from core.datasets.io import IMAGE_SUFFIXES, mask_from_labels, read_label_image, read_raw_image
from core.datasets.ome import PLANE_FILE, Plane, is_ome_zarr, read_plane_file, strip_suffix
from core.datasets.stacks import require_root
from core.errors import DatasetError

FOLDER = DatasetSpec(
    name="folder",
    title="Your own images/ + masks/ folder",
    description="Any folder holding images/ and masks/ with one mask per image, matched by file stem.",
    positive_class="foreground",
    kind="objects",
    splits=("train",),
    labelled_splits=("train",),
    needs_root=True,
    layout="a folder with images/ and masks/ side by side; each images/NAME.(png|tif|tiff|jpg|jpeg|ome.tif|ome.zarr) "
    "has a masks/NAME.* (8/16-bit; binary 0/255 or 0/1, or an instance-label image with 0 = background); "
    "unetlab.json beside them may choose the channel, z-plane and time point of OME files.",
    paper_size=None,
    ordering="independent",
)


def image_files(folder: Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name; hidden files skipped.

    An image name that is not a readable file (a broken link, a link loop) is skipped with a
    :class:`~core.errors.DatasetWarning` naming it, never silently.
    """
    import warnings

    from core.errors import DatasetWarning

    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() and path.suffix.lower() == ".zarr" and is_ome_zarr(path):
            files.append(path)  # an OME-Zarr image is a folder
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.is_file():
            files.append(path)
        elif path.is_symlink():
            warnings.warn(DatasetWarning(f"{path}: skipped: a link to {os.readlink(path)!r}, which is missing or "
                                         "loops back on itself"), stacklevel=2)
    return files


def read_pair(image_path: Path, mask_path: Path | None, connectivity: int,
              plane: Plane | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one image and its mask (the same ``plane`` of multi-dimensional files), checking that their sizes match."""
    image = read_raw_image(image_path, plane=plane)
    labels = read_label_image(mask_path, plane=plane)
    if labels.shape != image.shape[:2]:
        raise DatasetError(
            f"{mask_path}: mask is {labels.shape[0]}x{labels.shape[1]} but image {image_path.name} is "
            f"{image.shape[0]}x{image.shape[1]} (image/mask size mismatch; sizes are height x width)"
        )
    if mask_path.suffix.lower() in (".jpg", ".jpeg"):
        # Lossy compression smears a 0/255 mask into many grey levels: threshold at mid-range.
        labels = labels >= (128 if labels.dtype == np.uint8 else int(labels.max()) // 2 + 1)
    mask, instances = mask_from_labels(labels, connectivity, str(mask_path))
    return image, mask, instances


def read_pairs(pairs: list[tuple[str, Path, Path]], connectivity: int, plane: Plane | None = None) -> RawData:
    """Read (name, image, mask) triples in parallel (decoders release the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda pair: read_pair(pair[1], pair[2], connectivity, plane), pairs))
    return RawData(
        images=[image for image, _, _ in results],
        masks=[mask for _, mask, _ in results],
        instances=[instances for _, _, instances in results],
        names=[name for name, _, _ in pairs],
        checks=[f"{len(pairs)} masks readable, binary or label images, each the size of its image"],
    )


def _plan(root: Path | None, split: str) -> SourcePlan:
    root = require_root(FOLDER, root, subfolders=("images", "masks"))
    images_dir, masks_dir = root / "images", root / "masks"
    images = image_files(images_dir)
    if not images:
        raise DatasetError(f"{images_dir}: empty folder, no PNG, TIFF or JPEG images")
    masks_by_stem: dict[str, list[Path]] = {}
    for path in image_files(masks_dir):
        masks_by_stem.setdefault(strip_suffix(path.name), []).append(path)
    pairs = []
    for image in images:
        stem = strip_suffix(image.name)
        candidates = masks_by_stem.get(stem, [])
        if not candidates:
            raise DatasetError(f"{image}: missing mask for image (expected {masks_dir / stem}.png/.tif/...)")
        if len(candidates) > 1:
            raise DatasetError(f"{image}: several masks match it ({', '.join(c.name for c in candidates)})")
        pairs.append((stem, image, candidates[0]))
    stems = [strip_suffix(image.name) for image in images]
    if len(set(stems)) != len(stems):
        duplicated = sorted({stem for stem in stems if stems.count(stem) > 1})
        raise DatasetError(f"{images_dir}: several images share a stem ({', '.join(duplicated)}); masks match by stem")
    unmatched = len(set(masks_by_stem) - set(stems))
    plane = read_plane_file(root)
    files = [path for _, image, mask in pairs for path in (image, mask)]
    files = [*(key for path in files for key in key_files(path)), *([root / PLANE_FILE] if plane else [])]
    return SourcePlan(files=files, items=(pairs, unmatched, plane))


def key_files(path: Path) -> list[Path]:
    """The files that stand for ``path`` in the cache key (which keys files on size and time): the
    file itself, or every file of an OME-Zarr folder but its labels (a changed chunk is a changed image)."""
    if not path.is_dir():
        return [path]
    return sorted(file for file in path.rglob("*")
                  if file.is_file() and "labels" not in file.relative_to(path).parts[:1])


def _read(plan: SourcePlan) -> RawData:
    pairs, unmatched, plane = plan.items
    raw = read_pairs(pairs, connectivity=FOLDER.connectivity, plane=plane)
    raw.checks.insert(0, f"layout: images/ and masks/ with {len(pairs)} pairs matched by stem")
    if unmatched:
        raw.checks.append(f"{unmatched} masks without an image ignored")
    if plane is not None:
        raw.checks.append(f"multi-dimensional files read at {plane.describe()} ({PLANE_FILE})")
    return raw


SOURCES = [Source(FOLDER, _plan, _read)]
