"""Per-image preprocessing shared by training and prediction: intensity and colour.

A run's ``normalization`` and ``colour`` settings are applied by :func:`preprocess` to every
training image (core.train) and to every image a model predicts (core.inference), so the
network always sees the same kind of input it learnt from.
"""

from __future__ import annotations

import numpy as np

from core.config import COLOURS, NORMALIZATIONS
from core.datasets.io import to_float

#: Percentiles mapped to 0 and 1 by the "percentile" normalisation (as CSBDeep / StarDist do).
PERCENTILES = (1.0, 99.8)
#: Pixels sampled for percentiles and background checks: enough for 3 decimals, bounded cost.
_SAMPLE = 1 << 20


def _sample(image: np.ndarray) -> np.ndarray:
    """About ``_SAMPLE`` pixel values of an (H, W[, C]) image, on a regular grid."""
    pixels = image.shape[0] * image.shape[1]
    step = max(1, int(np.sqrt(pixels / _SAMPLE)))
    return image[::step, ::step]


def normalize_percentile(image: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]) -> np.ndarray:
    """Map the image's ``low`` and ``high`` percentiles (over all channels) to 0 and 1, clipped.

    Parameters
    ----------
    image : ndarray, float32, shape (H, W, C)

    Returns
    -------
    ndarray, float32, shape (H, W, C) in [0, 1]; a flat image (no spread) becomes all zeros.
    """
    lo, hi = np.percentile(_sample(image), [low, high])
    if hi - lo < 1e-6:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0, 1).astype(np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W, 1) float32, the mean of the channels."""
    return image.mean(axis=2, keepdims=True, dtype=np.float32)


def has_bright_background(grey: np.ndarray) -> bool:
    """True when most pixels are brighter than mid-range: the median of an (H, W, 1) image in [0, 1]
    is above 0.5 (brightfield or stained tissue; fluorescence has a dark background)."""
    return float(np.median(_sample(grey))) > 0.5


def preprocess(image: np.ndarray, normalization: str = "none", colour: str = "keep") -> np.ndarray:
    """An image as a run with these settings feeds it to the network.

    Parameters
    ----------
    image : ndarray, shape (H, W, C) or (H, W); float32 in [0, 1], uint8 or uint16
    normalization : one of :data:`core.config.NORMALIZATIONS`
    colour : one of :data:`core.config.COLOURS`

    Returns
    -------
    ndarray, float32, shape (H, W, C'); C' = 1 unless colour is "keep". With "none" / "keep"
    the image comes back as float32 in [0, 1], otherwise unchanged.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour handling {colour!r}; expected one of {COLOURS}")
    image = to_float(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if colour != "keep":
        image = to_grey(image)
        if colour == "grey-dark-background" and has_bright_background(image):
            image = 1 - image
    if normalization == "percentile":
        image = normalize_percentile(image)
    return image


def is_identity(normalization: str, colour: str) -> bool:
    """True when :func:`preprocess` would only convert to float (the default settings)."""
    return normalization == "none" and colour == "keep"


def input_channels(image_channels: int, colour: str) -> int:
    """Channels the network gets from images of ``image_channels`` channels."""
    return image_channels if colour == "keep" else 1
