"""Tests of reading uploaded images (core.datasets.io.read_upload): types, sizes from headers, clear errors."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from core.datasets import io as image_io
from core.datasets.io import IMAGE_SUFFIXES, UPLOAD_SUFFIXES, image_dimensions, read_upload
from core.errors import DatasetError


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only a signature, an IHDR declaring width x height (8-bit grey) and IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) \
        + chunk(b"IEND", b"")


def test_read_upload_accepts_8_and_16_bit_grey_rgb_and_rgba():
    grey16 = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000)
    image = read_upload("a.png", png(grey16))
    assert image.shape == (6, 10, 1) and image.dtype == np.float32
    assert image[0, 1, 0] == pytest.approx(1000 / 65535)
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = 255
    assert read_upload("b.PNG", png(rgba)).shape == (5, 7, 3)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, grey16)
    assert read_upload("c.tif", buffer.getvalue()).shape == (6, 10, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(buffer, format="JPEG")
    assert read_upload("d.jpeg", buffer.getvalue()).shape == (8, 8, 3)


def test_read_upload_gives_clear_errors():
    with pytest.raises(DatasetError, match="file type .gif is not supported"):
        read_upload("a.gif", b"GIF89a")
    with pytest.raises(DatasetError, match="empty"):
        read_upload("a.png", b"")
    with pytest.raises(DatasetError, match="not a readable PNG, JPEG or TIFF"):
        read_upload("a.png", b"this is not an image")
    with pytest.raises(DatasetError, match="over the limit of 100 pixels"):
        read_upload("a.png", png(np.zeros((20, 20), np.uint8)), max_pixels=100)


def test_image_dimensions_reads_headers():
    assert image_dimensions("a.png", png(np.zeros((7, 9), np.uint8))) == (7, 9)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((3, 5), np.uint16))
    assert image_dimensions("a.tif", buffer.getvalue()) == (3, 5)


def test_upload_suffixes_are_the_readers_suffixes():
    # Every image the readers take, plus a zipped OME-Zarr image (a folder cannot be uploaded).
    assert UPLOAD_SUFFIXES == IMAGE_SUFFIXES + (".zip",)


def test_huge_declared_sizes_are_refused_from_the_header_without_touching_pillows_limit():
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither Pillow's bomb warning nor any other escapes
        # Above our limit and Pillow's warning level, below its error level: the size is read.
        assert image_dimensions("big.png", png_header(10_000, 10_000)) == (10_000, 10_000)
        with pytest.raises(DatasetError, match=r"big.png: 10000 x 10000 pixels is over the limit of 64,000,000"):
            read_upload("big.png", png_header(10_000, 10_000))
        # Above Pillow's error level (twice its limit): Pillow will not even report the size.
        with pytest.raises(DatasetError, match=r"huge.png: its header declares an image far over the limit"):
            read_upload("huge.png", png_header(100_000, 100_000))
    assert Image.MAX_IMAGE_PIXELS == limit  # the global guard is left as it was


def test_every_tiff_page_counts_towards_the_limit():
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((3, 10, 6), np.uint8), photometric="minisblack")  # 3 pages of 60 pixels
    data = buffer.getvalue()
    assert image_dimensions("stack.tif", data) == (10, 6)
    assert [size[:2] for size in image_io._declared_sizes("stack.tif", data, 100)] == [(10, 6)] * 3
    with pytest.raises(DatasetError, match=r"stack.tif: 3 page\(s\) with 180 pixels in all is over the limit of 100"):
        read_upload("stack.tif", data, max_pixels=100)  # page 0 alone (60 pixels) would pass
    with pytest.raises(DatasetError, match="a stack of 3 pages"):
        read_upload("stack.tif", data, max_pixels=1000)  # under the limit: decoded, and refused as a stack
