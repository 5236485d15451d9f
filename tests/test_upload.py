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


# ---- plane pickers: OME uploads and TIFFs of 3 planar colour samples (#16) ------------------------


def ome_tiff(channels: int = 2, z: int = 4, shape=(48, 40)) -> tuple[bytes, np.ndarray]:
    """An OME-TIFF (c, z, y, x) whose plane (c, z) has the constant value 10 * c + z + 1."""
    planes = np.stack([np.stack([np.full(shape, 10 * c + k + 1, np.uint8) for k in range(z)])
                       for c in range(channels)])
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, planes, ome=True, metadata={"axes": "CZYX"})
    return buffer.getvalue(), planes


def test_upload_plane_choices_and_the_chosen_plane_of_an_ome_tiff():
    from core.datasets.ome import Plane
    from core.segment import read_upload_planes

    data, planes = ome_tiff()
    assert image_io.upload_plane_choices("cells.ome.tif", data) == {"c": 2, "z": 4}
    assert image_io.upload_plane_choices("cells.tif", data) == {}  # only OME names get a plane picker
    assert image_io.upload_plane_choices("cells.png", png(np.zeros((4, 4), np.uint8))) == {}
    chosen = read_upload_planes("cells.ome.tif", data, plane=Plane(channel=1, z=2))
    assert chosen.shape == (1, 48, 40, 1) and np.all(chosen == planes[1, 2, :, :, None]) and chosen[0, 0, 0, 0] == 13


def test_a_planar_three_sample_tiff_reads_as_rgb_or_as_three_planes():
    from core.segment import read_upload_planes

    stack = np.stack([np.full((20, 30), value, np.uint8) for value in (5, 6, 7)])
    buffer = io.BytesIO()
    # How tifffile stores a (3, H, W) array by default (so far): one planar RGB page.
    tifffile.imwrite(buffer, stack, photometric="rgb", planarconfig="separate")
    data = buffer.getvalue()
    assert image_io.planar_colour_tiff(data)
    assert read_upload_planes("s.tif", data).shape == (1, 20, 30, 3)  # what the header says
    planes = read_upload_planes("s.tif", data, samples_as_planes=True)
    assert planes.shape == (3, 20, 30, 1) and planes.dtype == np.uint8 and planes[:, 0, 0, 0].tolist() == [5, 6, 7]
    # Interleaved RGB, a 3-page grey stack and a PNG are not ambiguous.
    rgb = io.BytesIO()
    tifffile.imwrite(rgb, np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    pages = io.BytesIO()
    tifffile.imwrite(pages, stack, photometric="minisblack")
    assert not any(image_io.planar_colour_tiff(d) for d in (rgb.getvalue(), pages.getvalue(), png(stack[0])))
    with pytest.raises(DatasetError, match="planar colour samples"):
        image_io.read_samples_as_planes("p.tif", pages.getvalue())
