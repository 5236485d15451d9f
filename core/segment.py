"""Segmenting one uploaded image with bounded memory: what the Segment page runs.

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

if TYPE_CHECKING:
    from core.inference import LoadedModel

#: Longest side of the images shown on the page; downloads keep the full size.
PREVIEW_SIDE = 2048


@dataclass
class UploadPrediction:
    """The probability map of an upload (float16, full size) and how it was made."""

    probability: np.ndarray  # float16 (H, W) in [0, 1]
    seconds: float
    tiles: int
    scale_note: str


def predict_upload(loaded: LoadedModel, image: np.ndarray, name: str, tile_size: int | None = None,
                   flip_tta: bool = False, scale: str = "training") -> UploadPrediction:
    """Tiled prediction of an uploaded image (native dtype), kept as float16."""
    from core.inference import predict_image  # torch loads only when an image is predicted

    prediction = predict_image(loaded, image, tile_size=tile_size, flip_tta=flip_tta, source=name,
                                           scale=scale)
    return UploadPrediction(probability=prediction.probability.astype(np.float16), seconds=prediction.seconds,
                            tiles=prediction.tiles, scale_note=prediction.scale_note())


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
