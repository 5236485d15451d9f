"""nnU-Net's raw dataset layout (``nnunet``): ``imagesTr/CASE_0000.png`` + ``labelsTr/CASE.png``.

nnU-Net (Isensee et al., 2021) stores each training case as one file per input channel,
``CASE_XXXX.ext`` (``_0000`` the first channel), and one label file ``labelsTr/CASE.ext`` of class
ids (0 = background). A 2-D set of natural images may keep colour in one file (``CASE_0000.png``,
RGB). ``dataset.json`` names the channels, the classes and the ``file_ending``.

Here: one channel file is the image (grey or colour); three grey channel files are stacked as
RGB; other counts take the channel ``unetlab.json`` names (default 0, with a warning). Labels
are semantic classes, not objects, so the positive class is every label > 0 and the objects are
its connected components (8-connected), never the class ids. PNG and TIFF are read; NIfTI is not.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from core.datasets.base import DatasetSpec, RawData, Source, SourcePlan
from core.datasets.io import IMAGE_SUFFIXES, compact_labels, read_label_image, read_raw_image
from core.datasets.ome import PLANE_FILE, Plane, read_plane_file
from core.datasets.stacks import require_root
from core.errors import DatasetError, DatasetWarning

NNUNET = DatasetSpec(
    name="nnunet",
    title="An nnU-Net raw dataset (imagesTr/ + labelsTr/)",
    description="nnU-Net's layout: imagesTr/CASE_0000.png (one file per channel) and labelsTr/CASE.png "
                "(class ids); the positive class is every label > 0.",
    positive_class="foreground (labels > 0)",
    kind="objects",
    splits=("train",),
    labelled_splits=("train",),
    needs_root=True,
    layout="imagesTr/CASE_0000.png (channel files _0000, _0001, ...) and labelsTr/CASE.png, PNG or TIFF, with an "
           "optional dataset.json (nnU-Net v2); label ids > 0 are the positive class.",
    paper_size=None,
    ordering="independent",
)

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def file_ending(root: Path) -> str | None:
    """``dataset.json``'s ``file_ending`` (e.g. ``.png``), or None without one."""
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        ending = json.loads(path.read_text()).get("file_ending")
    except (OSError, ValueError, AttributeError) as error:
        raise DatasetError(f"{path}: unreadable dataset.json ({error})") from None
    return str(ending) if ending else None


def case_files(folder: Path, ending: str | None) -> dict[str, list[Path]]:
    """Case -> its channel files in channel order, from ``CASE_XXXX.ext`` names.

    Raises
    ------
    DatasetError
        A file not named CASE_XXXX, a NIfTI set, or a case whose channel numbers have gaps.
    """
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.name.endswith((".nii", ".nii.gz")):
            raise DatasetError(f"{path}: NIfTI files are not read; this reads 2-D PNG or TIFF nnU-Net sets")
        if path.suffix.lower() not in IMAGE_SUFFIXES or (ending and not path.name.endswith(ending)):
            continue
        match = CHANNEL_FILE.match(path.name[: -len(path.suffix)])
        if match is None:
            raise DatasetError(f"{path}: an nnU-Net image is named CASE_XXXX{path.suffix} (XXXX the channel, "
                               "e.g. _0000)")
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    ordered = {}
    for case, channels in cases.items():
        if sorted(channels) != list(range(len(channels))):
            raise DatasetError(f"{folder}: case {case} has channels {sorted(channels)}; expected _0000 up to "
                               f"_{len(channels) - 1:04d} without gaps")
        ordered[case] = [channels[i] for i in range(len(channels))]
    return ordered


def _plan(root: Path | None, split: str) -> SourcePlan:
    root = require_root(NNUNET, root, subfolders=("imagesTr", "labelsTr"))
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    ending = file_ending(root)
    cases = case_files(images_dir, ending)
    if not cases:
        raise DatasetError(f"{images_dir}: no CASE_0000.png/.tif images")
    items = []
    for case, channels in cases.items():
        labels = [path for path in labels_dir.glob(f"{case}.*")
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.stem == case]
        if not labels:
            raise DatasetError(f"{channels[0]}: missing label file {labels_dir / case}{ending or '.png'}")
        items.append((case, channels, labels[0]))
    plane = read_plane_file(root)
    files = [path for _, channels, label in items for path in (*channels, label)]
    return SourcePlan(files=files + ([root / PLANE_FILE] if plane else []), items=(items, plane))


def read_case(channels: list[Path], plane: Plane | None) -> np.ndarray:
    """One case's image (H, W, C): one file as it is; three grey files as RGB; else one chosen channel."""
    if len(channels) == 1:
        return read_raw_image(channels[0], plane=plane)
    if len(channels) != 3 or (plane is not None and plane.channel is not None):
        chosen = plane.channel if plane is not None and plane.channel is not None else 0
        if chosen >= len(channels):
            raise DatasetError(f"{channels[0].parent}: channel {chosen} does not exist ({len(channels)} channel files)")
        if plane is None or plane.channel is None:
            warnings.warn(DatasetWarning(f"{channels[0]}: {len(channels)} channel files; channel 0 read (choose "
                                         f"another in {PLANE_FILE})"), stacklevel=2)
        return read_raw_image(channels[chosen], plane=plane)
    pages = [read_raw_image(path, plane=plane) for path in channels]
    if any(page.shape[2] != 1 for page in pages) or len({page.shape for page in pages}) != 1:
        raise DatasetError(f"{channels[0]}: its channel files must be grey images of one size")
    return np.concatenate(pages, axis=2)


def _read(plan: SourcePlan) -> RawData:
    from skimage.measure import label as connected_components

    items, plane = plan.items
    images, masks, instances, names = [], [], [], []
    classes = set()
    for case, channels, label_path in items:
        image = read_case(channels, plane)
        labels = read_label_image(label_path, plane=plane)
        if labels.shape != image.shape[:2]:
            raise DatasetError(f"{label_path}: labels are {labels.shape[0]}x{labels.shape[1]} but the image is "
                               f"{image.shape[0]}x{image.shape[1]} (image/mask size mismatch)")
        classes.update(int(value) for value in np.unique(labels))
        mask = labels > 0
        images.append(image)
        masks.append(mask)
        instances.append(compact_labels(connected_components(mask, connectivity=NNUNET.connectivity)))
        names.append(case)
    checks = [f"layout: imagesTr/ and labelsTr/ with {len(items)} cases",
              f"class ids {sorted(classes)}: every id > 0 is the positive class; objects are its connected components"]
    return RawData(images=images, masks=masks, instances=instances, names=names, checks=checks)


SOURCES = [Source(NNUNET, _plan, _read)]
