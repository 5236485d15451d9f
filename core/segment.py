"""Segmenting uploaded images with bounded memory: what the Segment page runs.

One image: :func:`predict_upload` and the previews below. Several files or a TIFF stack:
:func:`read_upload_planes` (an upload as planes), :class:`SegmentedImage` per image or plane,
:func:`objects_table` and :func:`results_zip` (masks, label images and object counts and areas
as one download). Whether an upload looks like a model's training images:
:func:`image_facts`, :func:`combined_facts` and :func:`mismatch_warnings`.

A 64-megapixel upload (8000 x 8000, the largest the page takes) must not cost gigabytes per
browser session. So the image stays in its native dtype (uint8 / uint16) and is scaled
tile by tile; the probability map is kept as float16 (its 11-bit mantissa resolves 1/2048,
far finer than any threshold a user picks); instance labels are stored as uint16 when the
ids fit; and everything shown is a preview of at most :data:`PREVIEW_SIDE` pixels a side
(the browser shows no more), while downloads are built from the full-size arrays.
``benchmarks/segment_memory.py`` measures the peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.tables import SCORE_DECIMALS

if TYPE_CHECKING:
    import pandas as pd

    from core.datasets.ome import Plane

    from core.inference import LoadedModel

#: Longest side of the images shown on the page; downloads keep the full size.
PREVIEW_SIDE = 2048


@dataclass
class UploadPrediction:
    """The probability map of an upload (float16, full size) and how it was made; a model trained
    with target "mask+contour" also gives its outline probability (float16, same size), which
    the ``seeded-watershed`` post-processing needs."""

    probability: np.ndarray  # float16 (H, W) in [0, 1]
    seconds: float
    tiles: int
    scale_note: str
    contour: np.ndarray | None = None  # float16 (H, W) in [0, 1], or None


def predict_upload(loaded: LoadedModel, image: np.ndarray, name: str, tile_size: int | None = None,
                   flip_tta: bool = False, scale: str = "training") -> UploadPrediction:
    """Tiled prediction of an uploaded image (native dtype), kept as float16."""
    from core.inference import predict_image  # torch loads only when an image is predicted

    prediction = predict_image(loaded, image, tile_size=tile_size, flip_tta=flip_tta, source=name,
                                           scale=scale)
    contour = None if prediction.contour is None else prediction.contour.astype(np.float16)
    return UploadPrediction(probability=prediction.probability.astype(np.float16), seconds=prediction.seconds,
                            tiles=prediction.tiles, scale_note=prediction.scale_note(), contour=contour)


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Instance labels as uint16 when the ids fit (half of int32), else int32."""
    top = int(labels.max(initial=0))
    return labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.int32, copy=False)


def preview_step(shape: tuple[int, ...], max_side: int = PREVIEW_SIDE) -> int:
    """The stride that brings an image's longer side to at most ``max_side``."""
    return max(1, -(-max(shape[:2]) // max_side))


def preview(array: np.ndarray, max_side: int = PREVIEW_SIDE) -> np.ndarray:
    """Every k-th pixel of ``array`` (nearest neighbour, a view: no copy), for display only."""
    step = preview_step(array.shape, max_side)
    return array[::step, ::step]


def preview_float(image: np.ndarray, max_side: int = PREVIEW_SIDE) -> np.ndarray:
    """A display preview of a native-dtype image as float32 in [0, 1]."""
    from core.predict import tile_as_float

    return tile_as_float(preview(image, max_side), None)


# ---- several files and stacks ---------------------------------------------------------------


def read_upload_planes(name: str, data: bytes, plane: Plane | None = None,
                       samples_as_planes: bool = False) -> np.ndarray:
    """An uploaded file as planes of native dtype, shape (N, H, W, C): N = 1 for an image, the
    number of pages (planes) for a TIFF stack, which the Segment page offers plane by plane.

    Parameters
    ----------
    name, data : the upload's file name and bytes
    plane : the channel, z-plane and time point of an OME-TIFF or zipped OME-Zarr (one plane, N = 1;
        :func:`core.datasets.io.upload_plane_choices` lists the axes to choose along)
    samples_as_planes : read a TIFF of 3 planar colour samples
        (:func:`core.datasets.io.planar_colour_tiff`) as 3 grey planes instead of one RGB image

    Raises
    ------
    DatasetError
        As :func:`core.datasets.io.read_upload` does (naming the file by ``name``), and for a
        stack whose planes are not grey or RGB images.
    """
    from core.datasets.io import MAX_UPLOAD_PIXELS, read_samples_as_planes, read_upload
    from core.errors import DatasetError

    if samples_as_planes:
        return read_samples_as_planes(name, data)
    if plane is not None:
        return read_upload(name, data, as_float=False, plane=plane)[None]
    try:
        return read_upload(name, data, as_float=False)[None]
    except DatasetError as error:
        if "a stack of" not in str(error):
            raise
    import io as _io

    import tifffile

    try:
        with tifffile.TiffFile(_io.BytesIO(data)) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
    except Exception as error:  # the header was readable (read_upload checked it); the pages were not
        raise DatasetError(f"{name}: unreadable or corrupt TIFF stack ({type(error).__name__}: {error})") from None
    if "S" in axes:  # colour samples last
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    planes_axes = [i for i, axis in enumerate(axes) if axis not in "YXS"]
    height, width = array.shape[axes.index("Y")], array.shape[axes.index("X")]
    channels = array.shape[-1] if axes.endswith("S") else 1
    if channels not in (1, 3, 4):
        raise DatasetError(f"{name}: stack planes with {channels} channels; expected grey, RGB or RGBA")
    planes = array.reshape(int(np.prod([array.shape[i] for i in planes_axes])), height, width, channels)
    if int(np.prod(planes.shape)) > MAX_UPLOAD_PIXELS * channels:
        raise DatasetError(f"{name}: {planes.shape[0]} planes of {width} x {height} are over the limit of "
                           f"{MAX_UPLOAD_PIXELS:,} pixels")
    planes = planes[..., :3] if channels == 4 else planes
    if planes.dtype not in (np.uint8, np.uint16):
        from core.datasets.io import to_float

        planes = np.stack([to_float(plane) for plane in planes])
    return np.ascontiguousarray(planes)


@dataclass
class SegmentedImage:
    """One segmented image (or stack plane) of a batch: its mask, instance labels and timing."""

    name: str  # the uploaded file's name
    plane: int | None  # the stack plane (0-based), None for a plain image
    mask: np.ndarray  # bool (H, W)
    labels: np.ndarray  # uint16 / int32 (H, W), 0 = background
    seconds: float  # prediction + post-processing

    @property
    def stem(self) -> str:
        """A file-name stem unique within the batch: ``cells`` or ``stack_z003``."""
        from pathlib import Path

        stem = Path(self.name).stem
        return stem if self.plane is None else f"{stem}_z{self.plane:03d}"


#: Columns of the per-image objects table (and of ``objects.csv`` in the zip).
OBJECT_COLUMNS: tuple[str, ...] = ("File", "Plane", "Width (pixels)", "Height (pixels)", "Objects",
                                   "Foreground pixels", "Foreground share", "Mean object area (pixels)",
                                   "Median object area (pixels)", "Smallest object (pixels)",
                                   "Largest object (pixels)")


def object_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of each object 1..max (objects with no pixels, when ids have gaps, left out)."""
    counts = np.bincount(labels.ravel().astype(np.int64, copy=False))[1:]
    return counts[counts > 0]


def objects_table(results: list[SegmentedImage]) -> "pd.DataFrame":
    """One row per segmented image: its size, object count, foreground and object areas (pixels)."""
    import pandas as pd

    rows = []
    for result in results:
        areas = object_areas(result.labels)
        height, width = result.mask.shape
        rows.append({
            "File": result.name, "Plane": "" if result.plane is None else str(result.plane),
            "Width (pixels)": width, "Height (pixels)": height, "Objects": int(areas.size),
            "Foreground pixels": int(result.mask.sum()), "Foreground share": float(result.mask.mean()),
            "Mean object area (pixels)": float(areas.mean()) if areas.size else float("nan"),
            "Median object area (pixels)": float(np.median(areas)) if areas.size else float("nan"),
            "Smallest object (pixels)": int(areas.min()) if areas.size else 0,
            "Largest object (pixels)": int(areas.max()) if areas.size else 0,
        })
    return pd.DataFrame(rows, columns=list(OBJECT_COLUMNS))


def results_zip(results: list[SegmentedImage], note: str = "") -> bytes:
    """One zip of a batch: ``masks/STEM_mask.png`` (0/255), ``labels/STEM_labels.png`` (16-bit,
    or ``.tif`` 32-bit past 65,535 objects), ``objects.csv`` (:func:`objects_table`),
    ``object_areas.csv`` (one row per object: file, plane, object id, area in pixels) and
    ``README.txt`` saying how they were made (``note``)."""
    import io
    import zipfile

    from core.overlays import labels_download, mask_download

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        areas_lines = ["File,Plane,Object,Area (pixels)"]
        for result in results:
            archive.writestr(f"masks/{result.stem}_mask.png", mask_download(result.mask))
            data, suffix, _ = labels_download(result.labels)
            archive.writestr(f"labels/{result.stem}_labels{suffix}", data)
            counts = np.bincount(result.labels.ravel().astype(np.int64, copy=False))
            plane = "" if result.plane is None else str(result.plane)
            name = result.name.replace('"', "'")
            areas_lines += [f'"{name}",{plane},{object_id},{int(counts[object_id])}'
                            for object_id in np.flatnonzero(counts[1:]) + 1]
        archive.writestr("objects.csv", objects_table(results).to_csv(index=False))
        archive.writestr("object_areas.csv", "\n".join(areas_lines) + "\n")
        archive.writestr("README.txt", "Segmented with U-Net Lab. " + note + "\n"
                         "masks/: 0 = background, 255 = foreground. labels/: 0 = background, 1..N = objects.\n"
                         "objects.csv: one row per image (areas in pixels); object_areas.csv: one row per object.\n")
    return buffer.getvalue()


# ---- does an image look like the training images? -----------------------------------------


@dataclass(frozen=True)
class ImageFacts:
    """What the Segment page compares between an upload and a model's training images."""

    channels: int
    low: float  # 1st percentile of the intensities, in [0, 1]
    high: float  # 99th percentile
    median: float
    object_area: float | None  # median object area in pixels (None: no objects known)
    foreground: float | None  # share of foreground pixels
    n_images: int = 1


def image_facts(image: np.ndarray, labels: np.ndarray | None = None, mask: np.ndarray | None = None) -> ImageFacts:
    """Facts of one image (native dtype or float in [0, 1]); objects from ``labels`` when given."""
    from core.predict import tile_as_float

    sample = tile_as_float(preview(image, 512), None)
    low, median, high = (float(v) for v in np.percentile(sample, [1, 50, 99]))
    areas = object_areas(labels) if labels is not None else np.zeros(0)
    return ImageFacts(channels=int(image.shape[2]) if image.ndim == 3 else 1, low=low, high=high, median=median,
                      object_area=float(np.median(areas)) if areas.size else None,
                      foreground=float(np.mean(mask)) if mask is not None else None)


def combined_facts(facts: list[ImageFacts]) -> ImageFacts:
    """The medians of several images' facts (the training images of a model)."""
    def median(values):
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    return ImageFacts(channels=max(f.channels for f in facts), low=median(f.low for f in facts),
                      high=median(f.high for f in facts), median=median(f.median for f in facts),
                      object_area=median(f.object_area for f in facts), foreground=median(f.foreground for f in facts),
                      n_images=len(facts))


#: An upload differs "clearly" when its object areas or its intensity spread differ by this factor.
MISMATCH_FACTOR = 3.0


def mismatch_warnings(training: ImageFacts, upload: ImageFacts) -> list[str]:
    """Sentences naming how an upload differs clearly from a model's training images (channels,
    intensity range, object scale, foreground share); empty when nothing stands out."""
    warnings = []
    if upload.channels != training.channels:
        kinds = {1: "grey (1 channel)", 3: "colour (3 channels)"}
        warnings.append(f"channels: the image is {kinds.get(upload.channels, upload.channels)}, the model was "
                        f"trained on {kinds.get(training.channels, training.channels)} images")
    spread, trained_spread = upload.high - upload.low, training.high - training.low
    if trained_spread > 0 and (spread * MISMATCH_FACTOR < trained_spread or spread > trained_spread * MISMATCH_FACTOR
                               or not training.low - 0.1 <= upload.median <= training.high + 0.1):
        warnings.append(f"intensity: 1st to 99th percentile {upload.low:.{SCORE_DECIMALS}f} to "
                        f"{upload.high:.{SCORE_DECIMALS}f} (median {upload.median:.{SCORE_DECIMALS}f}), the "
                        f"training images {training.low:.{SCORE_DECIMALS}f} to {training.high:.{SCORE_DECIMALS}f} "
                        f"(median {training.median:.{SCORE_DECIMALS}f}), on a 0 to 1 scale")
    if upload.object_area and training.object_area:
        ratio = upload.object_area / training.object_area
        if ratio > MISMATCH_FACTOR or ratio < 1 / MISMATCH_FACTOR:
            side = ratio ** 0.5
            warnings.append(f"scale: the objects found have a median area of {upload.object_area:,.0f} pixels, "
                            f"those of the training images {training.object_area:,.0f} pixels ({ratio:.1f} times; "
                            f"resize the image by about {1 / side:.2f} to match)")
    if upload.foreground is not None and training.foreground is not None:
        if upload.foreground > 0.3 and upload.foreground > MISMATCH_FACTOR * training.foreground:
            warnings.append(f"foreground: {upload.foreground:.0%} of the pixels are called foreground, "
                            f"{training.foreground:.0%} in the training images")
    return warnings

