"""Correcting a predicted mask in the browser and training on the correction.

The Masks and Segment pages let a user fix a model's prediction (paint and erase pixels in a
small canvas, or delete, merge and split objects), save the corrected image + mask pair into a
*corrections folder* (an ordinary ``folder`` dataset: ``images/`` + ``masks/`` matched by file
stem, registered like any folder on the Train page), and queue a fine-tuning run that starts
from the current model's weights (``RunConfig.init_from``) and trains on that folder.

Everything here is arrays and files; the pages only lay it out.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.config import RunConfig
from core.errors import DatasetError, UNetLabError
from core.paths import cache_dir

#: Fewest pairs a folder needs before it is registered and a run can train on it (a run needs
#: some images to train on and some to validate on: ``core.user_datasets`` refuses fewer).
MIN_PAIRS = 2
#: Fine-tuning trains on this share of the corrections folder (the rest validates).
FINE_TUNE_FRACTION = 0.8


# ---- edits of a predicted mask ----------------------------------------------------------------


def delete_objects(labels: np.ndarray, object_ids: Sequence[int]) -> np.ndarray:
    """The label image without the given objects (their pixels become background)."""
    out = np.array(labels, copy=True)
    out[np.isin(out, list(object_ids))] = 0
    return out


def merge_objects(labels: np.ndarray, object_ids: Sequence[int]) -> np.ndarray:
    """The label image with the given objects as one (the smallest id), plus the background
    pixels that touch two of them (the gap a watershed line left), so the merged object is whole."""
    from scipy import ndimage

    ids = sorted(int(i) for i in object_ids)
    out = np.array(labels, copy=True)
    if len(ids) < 2:
        return out
    chosen = np.isin(out, ids)
    touching = np.zeros(out.shape, dtype=np.int32)
    for object_id in ids:
        touching += ndimage.binary_dilation(out == object_id)  # 4-neighbours: a gap, not its corners
    out[chosen | ((out == 0) & (touching >= 2))] = ids[0]
    return out


def split_object(labels: np.ndarray, object_id: int, parts: int = 2) -> np.ndarray:
    """The label image with one object cut into ``parts`` objects by a watershed of its distance
    transform from its ``parts`` farthest-apart interior peaks (new ids after the largest one).
    An object too small or too round to cut is left as it is."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    out = np.array(labels, copy=True)
    region = out == object_id
    if region.sum() < 2 * parts:
        return out
    distance = ndimage.distance_transform_edt(region)
    coordinates = np.argwhere(region)
    # Farthest-point seeds: the deepest point, then each next the point farthest from the chosen ones.
    seeds = [coordinates[int(np.argmax(distance[region]))]]
    for _ in range(parts - 1):
        gaps = np.min([np.hypot(*(coordinates - seed).T) for seed in seeds], axis=0)
        seeds.append(coordinates[int(np.argmax(gaps))])
    markers = np.zeros(out.shape, dtype=np.int32)
    for number, (row, column) in enumerate(seeds, start=1):
        markers[row, column] = number
    pieces = watershed(-distance, markers, mask=region)
    top = int(out.max())
    for number in range(2, parts + 1):
        out[pieces == number] = top + number - 1
    return out


def with_mask(labels: np.ndarray, mask: np.ndarray, connectivity: int = 2) -> np.ndarray:
    """The objects of ``labels`` kept where the (painted) ``mask`` is foreground; foreground painted
    outside every object becomes new objects (its connected components, ``connectivity`` 1 = 4-
    or 2 = 8-connected, ids after the largest)."""
    from skimage.measure import label as connected

    mask = np.asarray(mask, bool)
    out = np.where(mask, labels, 0).astype(np.int32)
    new = connected(mask & (out == 0), connectivity=connectivity)
    top = int(out.max(initial=0))
    out[new > 0] = new[new > 0] + top
    return out


def object_ids(labels: np.ndarray) -> list[int]:
    """The ids of the objects in a label image, ascending."""
    return [int(i) for i in np.unique(labels) if i != 0]


# ---- the canvas's mask and images as data URLs -------------------------------------------------


def png_data_url(array: np.ndarray) -> str:
    """An image (uint8 (H, W) or (H, W, 3|4)) as a ``data:image/png;base64,...`` URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def mask_data_url(mask: np.ndarray) -> str:
    """A binary mask as the canvas's mask layer: RGBA, foreground opaque white, background clear."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[np.asarray(mask, bool)] = 255
    return png_data_url(rgba)


def mask_from_data_url(url: str, shape: tuple[int, int]) -> np.ndarray:
    """The mask the canvas sent back (a PNG data URL; foreground = opaque pixels), resized to
    ``shape`` by nearest neighbour (the canvas may show a reduced view of a large image).

    Raises
    ------
    UNetLabError
        When ``url`` is not a PNG data URL.
    """
    from PIL import Image

    match = re.match(r"data:image/png;base64,(.*)$", url or "", re.S)
    if not match:
        raise UNetLabError("the mask editor sent no PNG image; draw again and press 'Use this mask'")
    try:
        with Image.open(io.BytesIO(base64.b64decode(match.group(1)))) as image:
            rgba = np.asarray(image.convert("RGBA"))
    except Exception as error:  # anything Pillow refuses: the editor's message was damaged
        raise UNetLabError(f"the mask editor sent an unreadable image ({type(error).__name__})") from None
    mask = rgba[:, :, 3] > 127
    if mask.shape != tuple(shape):
        rows = (np.arange(shape[0]) * mask.shape[0] // shape[0]).clip(0, mask.shape[0] - 1)
        columns = (np.arange(shape[1]) * mask.shape[1] // shape[1]).clip(0, mask.shape[1] - 1)
        mask = mask[rows][:, columns]
    return mask


# ---- the corrections folder ----------------------------------------------------------------------


def corrections_root() -> Path:
    """Where corrections folders live: ``<cache>/corrections/``."""
    return cache_dir() / "corrections"


def folder_name(text: str) -> str:
    """A corrections folder's name from what the user typed: letters, digits, ``._-``.

    Raises
    ------
    UNetLabError
        When nothing usable is left.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip(".-")[:64]
    if not name:
        raise UNetLabError(f"{text!r} is not a usable folder name: use letters, digits, '.', '_' or '-'")
    return name


def corrections_folder(name: str) -> Path:
    """The folder of the corrections set ``name`` (created with ``images/`` and ``masks/``)."""
    folder = corrections_root() / folder_name(name)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    return folder


def image_file_array(image: np.ndarray) -> np.ndarray:
    """An image as it is written into a folder dataset: uint8 / uint16 grey kept, uint16 colour
    and float images (in [0, 1]) as uint8; grey as (H, W)."""
    array = np.asarray(image)
    if array.dtype == np.uint16 and array.ndim == 3 and array.shape[2] == 3:
        array = (array // 257).astype(np.uint8)
    elif array.dtype not in (np.uint8, np.uint16):
        array = np.clip(np.rint(np.asarray(array, np.float32) * 255), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return array


def mask_file_array(mask: np.ndarray) -> np.ndarray:
    """A mask as it is written: a binary mask as 0/255 uint8, instance labels (ids above 1) as
    uint16 labels, so objects merged or split by hand stay as the user made them (the folder
    loader reads label masks as given)."""
    mask = np.asarray(mask)
    if mask.dtype != bool and int(mask.max(initial=0)) > 1:
        if int(mask.max()) > np.iinfo(np.uint16).max:
            raise UNetLabError(f"{int(mask.max()):,} objects: more than a 16-bit label mask holds")
        return mask.astype(np.uint16)
    return np.where(mask > 0, 255, 0).astype(np.uint8)


def save_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> Path:
    """Write ``images/STEM.png`` and ``masks/STEM.png`` (:func:`mask_file_array`) into a
    corrections folder; a pair with the same stem is replaced (the latest correction of an image
    wins). Returns the mask path.

    Raises
    ------
    UNetLabError
        When image and mask sizes differ.
    """
    from PIL import Image

    from core.fileio import atomic_path

    if tuple(np.asarray(image).shape[:2]) != tuple(mask.shape):
        raise UNetLabError(f"{stem}: the mask is {mask.shape[1]} x {mask.shape[0]} but the image "
                           f"{image.shape[1]} x {image.shape[0]}")
    stem = folder_name(stem)
    paths = []
    for sub, array in (("images", image_file_array(image)), ("masks", mask_file_array(mask))):
        path = folder / sub / f"{stem}.png"
        with atomic_path(path) as temporary:
            Image.fromarray(array).save(temporary, format="PNG")
        paths.append(path)
    return paths[1]


def pairs_in(folder: Path) -> list[str]:
    """The stems that have both an image and a mask in a corrections folder, sorted."""
    images = {path.stem for path in (folder / "images").glob("*.png")}
    return sorted(images & {path.stem for path in (folder / "masks").glob("*.png")})


def seed_with_training_images(folder: Path, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                              names: Sequence[str]) -> int:
    """Copy a model's training pairs into a corrections folder (those not there yet), so that
    fine-tuning keeps seeing what the model learnt from as well as the corrections. Returns how
    many pairs were written."""
    present = set(pairs_in(folder))
    written = 0
    for image, mask, name in zip(images, masks, names):
        stem = folder_name(f"train-{Path(name).stem}")
        if stem in present:
            continue
        save_pair(folder, stem, image, mask)
        written += 1
    return written


@dataclass(frozen=True)
class CorrectionsSet:
    """A corrections folder and whether a run can train on it yet."""

    folder: Path
    pairs: int
    label: str | None  # its label in the dataset picker once registered, else None

    @property
    def ready(self) -> bool:
        return self.label is not None

    def sentence(self) -> str:
        if self.ready:
            return f"{self.folder} holds {self.pairs} image + mask pair(s), registered as '{self.label}'"
        return (f"{self.folder} holds {self.pairs} pair(s); a run needs at least {MIN_PAIRS} (some to train on, "
                "some to validate on): save another corrected image")


def register_corrections(folder: Path) -> CorrectionsSet:
    """Register a corrections folder as a ``folder`` dataset once it holds :data:`MIN_PAIRS` pairs.

    Raises
    ------
    DatasetError
        The folder loader's own message when the folder does not load.
    """
    from core.user_datasets import register_user_dataset

    pairs = len(pairs_in(folder))
    if pairs < MIN_PAIRS:
        return CorrectionsSet(folder, pairs, None)
    entry = register_user_dataset("folder", folder, label=f"corrections: {folder.name}")
    return CorrectionsSet(folder, pairs, entry.label)


# ---- fine-tuning from the current model ------------------------------------------------------------


def init_from_name(model_key: str) -> str:
    """What ``RunConfig.init_from`` holds for a model picker's key: the run id, or the shipped
    model's name for ``starter:<name>``."""
    return model_key.split(":", 1)[1] if model_key.startswith("starter:") else model_key


def fine_tune_config(base: RunConfig, init_from: str, folder: Path, epochs: int | None = None,
                     **overrides: Any) -> RunConfig:
    """The run that fine-tunes a model on a corrections folder: the model's own settings (its
    width, depth, patch, batch, loss, image size...), trained on the folder (train fraction
    :data:`FINE_TUNE_FRACTION`) from the model's weights.

    Raises
    ------
    ConfigError
        When the settings are invalid.
    """
    values = base.to_dict()
    values.update(dataset="folder", root=str(folder), train_fraction=FINE_TUNE_FRACTION,
                  validation_fraction=round(1 - FINE_TUNE_FRACTION, 4), split_strategy="auto", group_pattern=None,
                  study=None, notes=f"fine-tuned from {init_from} on the corrections in {folder.name}", extra={},
                  init_from=init_from, seed=0)
    if epochs is not None:
        values["epochs"] = int(epochs)
    values.update(overrides)
    return RunConfig.from_dict(values).validate()


def check_channels(image_channels: int, model_channels: int, name: str) -> None:
    """Refuse a pair whose image has another channel count than the model reads."""
    if image_channels != model_channels:
        raise DatasetError(f"{name}: {image_channels} channel(s) but the model reads {model_channels}; "
                           "a corrections folder holds images the model can train on")
