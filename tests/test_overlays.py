"""Tests of core.overlays: error, mask and instance overlays, and the downloadable mask and label files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import confusion_matrix

from core import overlays
from core.errors import UNetLabError


def test_error_overlay_colours_each_error_class():
    image = np.full((2, 2, 1), 0.5, np.float32)
    truth = np.array([[True, True], [False, False]])
    prediction = np.array([[True, False], [True, False]])
    full = overlays.error_overlay(image, truth, prediction, opacity=1.0)
    assert full.dtype == np.uint8 and full.shape == (2, 2, 3)
    assert tuple(full[0, 0]) == overlays.ERROR_COLOURS["true positive"]
    assert tuple(full[0, 1]) == overlays.ERROR_COLOURS["false negative"]
    assert tuple(full[1, 0]) == overlays.ERROR_COLOURS["false positive"]
    grey = overlays.display_rgb(image, stretch=False)[1, 1]
    assert tuple(full[1, 1]) == tuple(grey) == (128, 128, 128)  # true negative keeps the image
    half = overlays.error_overlay(image, truth, prediction, opacity=0.5)
    expected = np.rint(0.5 * 128 + 0.5 * np.array(overlays.ERROR_COLOURS["false positive"])).astype(np.uint8)
    assert tuple(half[1, 0]) == tuple(expected)


def test_error_counts_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    truth, prediction = rng.random((40, 30)) > 0.6, rng.random((40, 30)) > 0.5
    counts = overlays.error_counts(truth, prediction)
    tn, fp, fn, tp = confusion_matrix(truth.ravel(), prediction.ravel()).ravel()
    assert counts == {"true positive": tp, "false positive": fp, "false negative": fn, "true negative": tn}


def test_error_overlay_refuses_mismatched_shapes_and_bad_opacity():
    with pytest.raises(UNetLabError, match="same height and width"):
        overlays.error_overlay(np.zeros((4, 4)), np.zeros((4, 5), bool), np.zeros((4, 4), bool))
    with pytest.raises(UNetLabError, match="opacity"):
        overlays.error_overlay(np.zeros((4, 4)), np.zeros((4, 4), bool), np.zeros((4, 4), bool), opacity=2)


def test_label_overlay_colours_objects_distinctly_and_outlines_them():
    image = np.zeros((12, 12), np.float32)
    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5] = 1
    labels[6:11, 6:11] = 2
    out = overlays.label_overlay(image, labels, opacity=1.0)
    assert (out[labels == 0] == 0).all()  # background untouched
    assert (out[1, 1] == 255).all()  # outline pixel
    assert tuple(out[3, 3]) != tuple(out[8, 8])  # inner pixels of two objects differ in colour
    assert tuple(out[3, 3]) == tuple(overlays.label_colours(2)[1])


def test_display_rgb_stretches_dim_16_bit_images():
    image = (np.arange(100, dtype=np.float32).reshape(10, 10) * 40) / 65535  # a 12-bit range in 16 bits
    shown = overlays.display_rgb(image)
    assert shown.shape == (10, 10, 3) and shown.max() == 255 and shown.min() == 0
    assert overlays.display_rgb(image, stretch=False).max() < 20


def test_probability_image_is_viridis():
    out = overlays.probability_image(np.array([[0.0, 1.0]], np.float32))
    assert tuple(out[0, 0]) == (68, 1, 84) and tuple(out[0, 1]) == (253, 231, 37)


def test_mask_and_label_downloads_round_trip():
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    decoded = np.asarray(Image.open(io.BytesIO(overlays.mask_download(mask))))
    assert decoded.dtype == np.uint8 and set(np.unique(decoded)) == {0, 255} and np.array_equal(decoded > 0, mask)
    labels = np.arange(24, dtype=np.int32).reshape(4, 6) * 2000
    data, suffix, mime = overlays.labels_download(labels)
    assert (suffix, mime) == (".png", "image/png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))).astype(np.int64), labels)
    labels[0, 0] = 70000
    data, suffix, _ = overlays.labels_download(labels)
    assert suffix == ".tif" and np.array_equal(tifffile.imread(io.BytesIO(data)), labels)
