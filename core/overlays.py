"""The home of the images U-Net Lab shows and offers for download.

Overlays lay truth, predictions, pixel errors and instances over an image as uint8 RGB
arrays (what ``st.image`` and the report's image strips take); the downloads turn masks
and label images into PNG (or TIFF) bytes that keep every value exactly.
"""

from __future__ import annotations

import io

import numpy as np

from core.errors import UNetLabError

#: Error colours of the mask overlays (RGB).
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "true positive": (0, 200, 0),
    "false positive": (255, 0, 255),
    "false negative": (0, 170, 255),
}


# --------------------------------------------------------------------------------------
# Images and overlays
# --------------------------------------------------------------------------------------


def display_rgb(image: np.ndarray, stretch: bool = True) -> np.ndarray:
    """An (H, W, C) or (H, W) float image in [0, 1] as uint8 RGB (H, W, 3) for display.

    ``stretch`` maps the 0.5th..99.5th percentile to the full range, so a 12-bit
    camera image stored in 16 bits (which reads as dark) is visible.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise UNetLabError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if stretch and image.size:
        low, high = np.percentile(image, [0.5, 99.5])
        if high > low:
            image = (image - low) / (high - low)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def error_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                  opacity: float = 0.5) -> np.ndarray:
    """The image with every pixel coloured by its error class.

    True positives (truth and prediction) green, false positives (prediction only)
    magenta, false negatives (truth only) light blue (:data:`ERROR_COLOURS`); true
    negatives keep the image.

    Parameters
    ----------
    image : ndarray, (H, W, C) or (H, W), float in [0, 1], or uint8 RGB (H, W, 3)
    truth, prediction : ndarray, bool, shape (H, W)
    opacity : float in [0, 1], weight of the colour over the image

    Returns
    -------
    ndarray, uint8, shape (H, W, 3)
    """
    truth, prediction = np.asarray(truth, bool), np.asarray(prediction, bool)
    base = _base_rgb(image)
    if truth.shape != base.shape[:2] or prediction.shape != base.shape[:2]:
        raise UNetLabError(f"image {base.shape[:2]}, truth {truth.shape} and prediction {prediction.shape} "
                           "must have the same height and width")
    classes = {"true positive": truth & prediction, "false positive": prediction & ~truth,
               "false negative": truth & ~prediction}
    return _blend(base, [(classes[name], ERROR_COLOURS[name]) for name in classes], opacity)


def error_counts(truth: np.ndarray, prediction: np.ndarray) -> dict[str, int]:
    """Pixel counts of the error classes shown by :func:`error_overlay`."""
    truth, prediction = np.asarray(truth, bool), np.asarray(prediction, bool)
    return {"true positive": int((truth & prediction).sum()), "false positive": int((prediction & ~truth).sum()),
            "false negative": int((truth & ~prediction).sum()), "true negative": int((~truth & ~prediction).sum())}


def mask_overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.5,
                 colour: tuple[int, int, int] = (255, 200, 0)) -> np.ndarray:
    """The image with a mask filled in one colour (uint8 RGB)."""
    base = _base_rgb(image)
    return _blend(base, [(np.asarray(mask, bool), colour)], opacity)


def label_colours(n_labels: int, seed: int = 0) -> np.ndarray:
    """uint8 (n_labels + 1, 3) colours: row 0 (background) black, then bright random hues."""
    import colorsys

    rng = np.random.default_rng(seed)
    hues = rng.permutation(n_labels) / max(n_labels, 1)
    colours = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    table = np.zeros((n_labels + 1, 3), np.uint8)
    if n_labels:
        table[1:] = np.rint(np.array(colours) * 255).astype(np.uint8)
    return table


def label_overlay(image: np.ndarray, labels: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The image with each instance filled in its own colour and outlined in white.

    Parameters
    ----------
    labels : ndarray, integer, shape (H, W); 0 = background
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UNetLabError(f"labels must be an integer array, got {labels.dtype}")
    base = _base_rgb(image)
    if labels.shape != base.shape[:2]:
        raise UNetLabError(f"labels {labels.shape} and image {base.shape[:2]} differ in size")
    table = label_colours(int(labels.max()) if labels.size else 0)
    coloured = table[labels]
    inside = labels > 0
    out = base.astype(np.float32)
    out[inside] = (1 - opacity) * out[inside] + opacity * coloured[inside]
    out[find_boundaries(labels, mode="inner") & inside] = 255
    return np.rint(out).astype(np.uint8)


def probability_image(probability: np.ndarray) -> np.ndarray:
    """A probability map (H, W) in [0, 1] as uint8 RGB through the figures' colour scale (viridis)."""
    from plotly.colors import sample_colorscale

    from core.figures import COLOURSCALE  # imported here: plotly's figure classes load only when needed

    lut = np.array([[int(c) for c in s[4:-1].split(",")]
                    for s in sample_colorscale(COLOURSCALE, np.linspace(0, 1, 256).tolist())], np.uint8)
    index = np.rint(np.clip(np.asarray(probability, np.float32), 0, 1) * 255).astype(np.intp)
    return lut[index]


def _base_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    return display_rgb(image)


def _blend(base: np.ndarray, layers: list[tuple[np.ndarray, tuple[int, int, int]]], opacity: float) -> np.ndarray:
    if not 0 <= opacity <= 1:
        raise UNetLabError(f"opacity must be in [0, 1], got {opacity}")
    out = base.astype(np.float32)
    for where, colour in layers:
        out[where] = (1 - opacity) * out[where] + opacity * np.asarray(colour, np.float32)
    return np.rint(out).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 / uint16 / bool array (H, W) or uint8 (H, W, 3) as PNG bytes."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * np.uint8(255)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_download(mask: np.ndarray) -> bytes:
    """The binary mask as an 8-bit PNG (0 background, 255 foreground)."""
    return png_bytes(np.asarray(mask, bool))


def labels_file_type(labels: np.ndarray) -> tuple[str, str]:
    """(suffix, MIME type) of :func:`labels_download`'s file: 16-bit PNG while the ids fit
    (up to 65,535 objects), else a 32-bit TIFF, so the ids survive exactly."""
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise UNetLabError("label ids must be non-negative")
    if not labels.size or labels.max() <= 65535:
        return ".png", "image/png"
    return ".tif", "image/tiff"


def labels_download(labels: np.ndarray) -> tuple[bytes, str, str]:
    """An instance label image as a file: (bytes, suffix, MIME type); see :func:`labels_file_type`."""
    labels = np.asarray(labels)
    suffix, mime = labels_file_type(labels)
    if suffix == ".png":
        return png_bytes(labels.astype(np.uint16, copy=False)), suffix, mime
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, labels.astype(np.uint32))
    return buffer.getvalue(), ".tif", "image/tiff"
