"""Reading images, masks and TIFF stacks into numpy arrays, with clear errors.

Three kinds of reader:

- ``read_raw_image`` / ``read_image``: one picture (PNG, TIFF, JPEG; 8/16-bit; grey, RGB, RGBA)
  as (H, W, C) with C = 1 or 3 (alpha dropped). The raw reader keeps the native dtype
  (uint8 or uint16; float only for float TIFFs) so datasets stay small in memory;
  ``to_float`` turns it into float32 in [0, 1].
- ``read_label_image``: one mask file as a 2-D non-negative integer (or bool) array. Palette
  PNGs give their palette indices (the NCMIR labels are palette PNGs with indices {0, 1}).
- ``read_stack``: a multi-page TIFF as (N, H, W).
- ``read_upload``: an uploaded file (the Segment page), its size checked from the header
  (``image_dimensions``) before any pixel is decoded.

``mask_from_labels`` decides whether a label array is a binary mask or an instance-label image.
Every failure raises :class:`~core.errors.DatasetError` naming the file and the problem.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets.ome import Layout, Plane, is_ome_zarr, read_ome_zarr, tiff_layout
from core.errors import DatasetError, DatasetWarning

#: Image files the readers take, by name suffix (folders, the CLI, uploads).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: Files the Segment page accepts (by name suffix): every image the readers take (OME-TIFF is
#: ``.ome.tif``), and an OME-Zarr image zipped into one file (``.zip``, e.g. ``image.ome.zarr.zip``).
UPLOAD_SUFFIXES: tuple[str, ...] = IMAGE_SUFFIXES + (".zip",)
#: Largest uploaded image segmented (pixels); about 8k x 8k, whose float maps take ~1 GB.
MAX_UPLOAD_PIXELS: int = 64_000_000
#: Largest image file a dataset may hold (pixels, all pages): 16k x 16k. Checked from the
#: header before decoding, so a small compressed "bomb" declaring a huge size costs nothing.
MAX_FILE_PIXELS: int = 256_000_000
#: Largest TIFF stack (pixels, all pages): 1,000 slices of 1k x 1k.
MAX_STACK_PIXELS: int = 1_000_000_000
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# ---- opening any source ------------------------------------------------------------------


def _source_bytes(source: Any, name: str | None = None) -> tuple[bytes, str]:
    """The file's bytes and a label naming it in error messages (``name`` when given).

    ``source`` may be a path, raw bytes, or a file-like object (e.g. Streamlit's
    ``UploadedFile``, which has ``getvalue`` and ``name``).
    """
    if name is not None and not isinstance(source, (str, Path)):
        return _source_bytes(source)[0], name
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DatasetError(f"{path}: file not found")
        try:
            return path.read_bytes(), str(path)
        except OSError as error:
            raise DatasetError(f"{path}: cannot read file ({error.strerror or error})") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "the image given as bytes"
    label = str(getattr(source, "name", "") or "the uploaded file")
    if hasattr(source, "getvalue"):
        return bytes(source.getvalue()), label
    if hasattr(source, "read"):
        return bytes(source.read()), label
    raise DatasetError(f"cannot read an image from a {type(source).__name__}; give a path, bytes or a file object")


def _decode(data: bytes, label: str, palette_indices: bool, plane: Plane | None = None,
            for_labels: bool = False) -> np.ndarray:
    """Decode bytes with tifffile (TIFF) or Pillow (everything else) into a numpy array.

    Returns (H, W) or (H, W, C) in the file's dtype. Palette images give their indices if
    ``palette_indices``, else their colours. An OME-TIFF (or any TIFF when ``plane`` is given)
    gives the one plane ``plane`` chooses (see :mod:`core.datasets.ome`).
    """
    if not data:
        raise DatasetError(f"{label}: empty file")
    try:
        check_declared_size(label, data, MAX_FILE_PIXELS)
    except _UnreadableHeader:
        pass  # the decoder below says what is wrong with the file, in its own words
    try:
        if data[:4] in _TIFF_MAGIC:
            return _decode_tiff(data, label, plane, for_labels)
        return _decode_pillow(data, label, palette_indices)
    except DatasetError:
        raise
    except Exception as error:  # every decoder failure (truncated, not an image, ...) is bad input
        raise DatasetError(f"{label}: unreadable or corrupt image file ({type(error).__name__}: "
                           f"{_without_object_reprs(str(error), label)[:200]})") from None


def _without_object_reprs(text: str, label: str) -> str:
    """Decoder messages name in-memory files as ``<_io.BytesIO object at 0x...>``: name the file instead."""
    import re

    return re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", label, text)


def check_declared_size(label: str, data: bytes, max_pixels: int) -> None:
    """Refuse a file whose header declares more than ``max_pixels`` pixels (all pages), before decoding.

    Raises
    ------
    DatasetError
        Naming the file, its declared size and the limit.
    """
    pages = _declared_sizes(label, data, max_pixels)
    total = sum(height * width * planes for height, width, planes in pages)
    if total > max_pixels:
        height, width, planes = pages[0]
        size = (f"{width} x {height} pixels" if len(pages) == 1 and planes == 1
                else f"{len(pages)} page(s) with {total:,} pixels in all")
        raise DatasetError(f"{label}: {size} is over the limit of {max_pixels:,} pixels "
                           f"({_limit_side(max_pixels)}); crop or downscale it first")


def _decode_tiff(data: bytes, label: str, plane: Plane | None = None, for_labels: bool = False) -> np.ndarray:
    import tifffile

    from core.datasets.ome import read_tiff_plane, tiff_is_multidimensional

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        # OME-TIFF (channels, z-planes, time points): one plane, its pages only. A plain stack stays
        # refused below unless a plane was asked for.
        if (plane is not None or tif.is_ome) and tiff_is_multidimensional(tif):
            array = read_tiff_plane(tif, plane, label, for_labels)
            if array.size == 0:
                raise DatasetError(f"{label}: unreadable or corrupt image file (no readable pages)")
            return array[:, :, 0] if array.shape[2] == 1 else array
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
        n_pages = len(tif.pages)
    if n_pages > 1 and "S" in axes:
        warnings.warn(DatasetWarning(f"{label}: {n_pages} pages read as the {array.shape[axes.index('S')]} colour "
                                     "channels of one image (as the file's metadata says); if they are separate "
                                     "grey images, save them as separate files"), stacklevel=2)
    if array.size == 0:
        raise DatasetError(f"{label}: unreadable or corrupt image file (no readable pages)")
    # Planar RGB ("SYX") becomes interleaved (Y, X, S).
    if "S" in axes and axes.index("S") != len(axes) - 1:
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    extra = [size for axis, size in zip(axes, array.shape) if axis not in "YXS" and size > 1]
    if extra:
        raise DatasetError(
            f"{label}: a stack of {int(np.prod(extra))} pages {array.shape} where one image was expected"
        )
    keep = [axis in "YXS" for axis in axes]
    return array.reshape([size for size, kept in zip(array.shape, keep) if kept])


def _decode_pillow(data: bytes, label: str, palette_indices: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        mode = image.mode
        if mode in ("P", "PA") and not palette_indices:
            image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        array = np.asarray(image)
    if array.dtype.byteorder == ">":  # "I;16B" arrives big-endian
        array = array.astype(array.dtype.newbyteorder("="))
    return array


# ---- images ---------------------------------------------------------------------------------


def _native_dtype(array: np.ndarray, label: str) -> np.ndarray:
    """uint8 and uint16 stay; other integers move to uint16 if they fit; floats become float32 in [0, 1]."""
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise DatasetError(
                f"{label}: {array.dtype} image with values {low}..{high} does not fit 16 bits; "
                "save it as 8- or 16-bit unsigned"
            )
        return array.astype(np.uint16)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise DatasetError(f"{label}: float image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            return array
        # A float image outside [0, 1] has no natural white point: stretch min..max to 0..1.
        return (array - low) / (high - low) if high > low else np.zeros_like(array)
    raise DatasetError(f"{label}: unsupported pixel type {array.dtype}")


def read_raw_image(source: Any, name: str | None = None, plane: Plane | None = None) -> np.ndarray:
    """Read one image in its native dtype.

    Parameters
    ----------
    source : path, bytes or file-like
        A PNG, TIFF or JPEG file (8- or 16-bit; grey, grey+alpha, RGB, RGBA, palette), an
        OME-TIFF, or the folder of an OME-Zarr image.
    name : str, optional
        How messages name the file when ``source`` is bytes or a file object.
    plane : Plane, optional
        Which channel, z-plane and time point of a multi-dimensional file (OME-TIFF, OME-Zarr, or
        a TIFF stack when given); see :mod:`core.datasets.ome`.

    Returns
    -------
    ndarray, shape (H, W, C), C = 1 (grey) or 3 (colour)
        uint8 or uint16; float32 in [0, 1] for float TIFFs (a float image outside [0, 1] is
        stretched from its min..max). Alpha channels are dropped.

    Raises
    ------
    DatasetError
        Missing, unreadable or corrupt file; a multi-page stack; an unsupported channel count.
    """
    zarr_path = _zarr_folder(source)
    if zarr_path is not None:
        array, label = read_ome_zarr(zarr_path, plane, max_pixels=MAX_FILE_PIXELS), str(zarr_path)
    else:
        data, label = _source_bytes(source, name)
        array = _decode(data, label, palette_indices=False, plane=plane)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DatasetError(f"{label}: expected a 2-D image, got an array of shape {array.shape}")
    channels = array.shape[2]
    if channels == 2:  # grey + alpha
        array = array[:, :, :1]
    elif channels == 4:  # RGBA
        array = array[:, :, :3]
    elif channels not in (1, 3):
        raise DatasetError(f"{label}: {channels} channels; expected grey (1), RGB (3) or RGBA (4)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DatasetError(f"{label}: image has no pixels (shape {array.shape})")
    return np.ascontiguousarray(_native_dtype(array, label))


def to_float(image: np.ndarray) -> np.ndarray:
    """Native image -> float32 in [0, 1]: uint8 / 255, uint16 / 65535, floats unchanged.

    16-bit images are divided by 65535 (the dtype's range, as ``skimage.img_as_float`` does),
    so a 12-bit camera image stays dim rather than being stretched per image.
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1 / 255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1 / 65535)
    return image.astype(np.float32, copy=False)


def _zarr_folder(source: Any) -> Path | None:
    """``source`` as a Path when it is the folder of an OME-Zarr image; DatasetError for another folder."""
    if not isinstance(source, (str, Path)) or not Path(source).is_dir():
        return None
    if not is_ome_zarr(source):
        raise DatasetError(f"{source}: a folder, not an image file (nor an OME-Zarr image)")
    return Path(source)


def read_image(path_or_bytes: Any, name: str | None = None, plane: Plane | None = None) -> np.ndarray:
    """Read one image as float32 (H, W, C) in [0, 1].

    Parameters
    ----------
    path_or_bytes : str, Path, bytes or file-like
        PNG, TIFF or JPEG; 8/16-bit; grey, RGB or RGBA (alpha dropped).

    Returns
    -------
    ndarray, float32, shape (H, W, C), C = 1 or 3

    Raises
    ------
    DatasetError
        On a missing, unreadable or unsupported file.
    """
    return to_float(read_raw_image(path_or_bytes, name, plane))


# ---- uploads --------------------------------------------------------------------------------


def read_upload(name: str, data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS, as_float: bool = True,
                plane: Plane | None = None) -> np.ndarray:
    """Decode an uploaded image file into float32 (H, W, C) in [0, 1], C = 1 or 3.

    With ``as_float=False`` the image keeps its native dtype (uint8 / uint16, see
    :func:`read_raw_image`): a quarter (or half) of float32's memory for a large upload.

    The size is checked from the file header before the pixels are decoded; a TIFF counts
    the pixels of all its pages, since the decoder would allocate them all (an OME-TIFF, whose
    plane is read page by page, counts the pages of one plane).

    ``plane`` chooses the channel, z-plane and time point of an OME-TIFF or a zipped OME-Zarr
    (``.zip``); :func:`upload_layout` says which there are, for a picker.

    Raises
    ------
    DatasetError
        A file type other than PNG, JPEG or TIFF; an empty, unreadable or corrupt file;
        a stack; more than ``max_pixels`` pixels.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise DatasetError(f"{name}: file type {suffix or '(none)'} is not supported; "
                           f"upload a PNG, JPEG or TIFF image ({', '.join(UPLOAD_SUFFIXES)})")
    if not data:
        raise DatasetError(f"{name}: the file is empty")
    if suffix == ".zip":
        with _zipped_zarr(name, data) as image:
            if image.height * image.width > max_pixels:
                raise DatasetError(f"{name}: {image.width} x {image.height} pixels is over the limit of "
                                   f"{max_pixels:,} pixels ({_limit_side(max_pixels)}); crop or downscale it first")
            raw = _native_dtype(image.read(plane), name)
            raw = raw[:, :, :3] if raw.shape[2] == 4 else raw[:, :, :1] if raw.shape[2] == 2 else raw
            return to_float(raw) if as_float else raw
    if _upload_is_ome_tiff(data):
        check_plane_size(name, data, max_pixels)
    else:
        check_declared_size(name, data, max_pixels)
    if as_float:
        return read_image(bytes(data), name=name, plane=plane)
    return read_raw_image(bytes(data), name=name, plane=plane)


def _upload_is_ome_tiff(data: bytes) -> bool:
    if data[:4] not in _TIFF_MAGIC:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            return bool(tif.is_ome)
    except Exception:  # noqa: BLE001 - not readable: the reader says why
        return False


def check_plane_size(name: str, data: bytes, max_pixels: int) -> None:
    """Refuse an OME-TIFF whose one plane (all its channels) declares more than ``max_pixels``."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        axes, shape = tiff_layout(tif)
    sizes = dict(zip(axes, shape))
    total = sizes.get("y", 1) * sizes.get("x", 1) * sizes.get("s", 1) * sizes.get("c", 1)
    if total > max_pixels:
        raise DatasetError(f"{name}: one plane holds {total:,} pixels (all channels), over the limit of "
                           f"{max_pixels:,} pixels ({_limit_side(max_pixels)}); crop or downscale it first")


class _zipped_zarr:
    """``with _zipped_zarr(name, data) as image``: the OME-Zarr image inside an uploaded zip file,
    opened lazily from a temporary copy (removed on exit)."""

    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data

    def __enter__(self):
        import os
        import tempfile
        import zipfile

        import zarr

        from core.datasets.ome import open_ome_zarr, zipped_zarr_root

        handle, self.path = tempfile.mkstemp(suffix=".zip")
        with os.fdopen(handle, "wb") as file:
            file.write(self.data)
        try:
            with zipfile.ZipFile(self.path) as archive:
                root = zipped_zarr_root(archive.namelist())
        except zipfile.BadZipFile:
            self._remove()
            raise DatasetError(f"{self.name}: not a readable zip file") from None
        if root is None:
            self._remove()
            raise DatasetError(f"{self.name}: a zip file without an OME-Zarr image (no zarr.json or .zattrs in it)")
        self.store = zarr.storage.ZipStore(self.path, mode="r")
        try:
            return open_ome_zarr(self.name, store=self.store, group_path=root)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *_: Any) -> None:
        try:
            self.store.close()
        finally:
            self._remove()

    def _remove(self) -> None:
        Path(self.path).unlink(missing_ok=True)


def upload_layout(name: str, data: bytes) -> Layout:
    """The axes of an uploaded image and their sizes (``Layout.choices``: the channels, z-planes and
    time points a user may choose among), read from its header / metadata only.

    Raises
    ------
    DatasetError
        The file cannot be read.
    """
    suffix = Path(name).suffix.lower()
    if suffix == ".zip":
        with _zipped_zarr(name, data) as image:
            return image.layout()
    if data[:4] in _TIFF_MAGIC:
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                axes, shape = tiff_layout(tif)
        except Exception as error:  # noqa: BLE001
            raise DatasetError(f"{name}: unreadable TIFF ({type(error).__name__}: {str(error)[:160]})") from None
        sizes = {("c" if axis == "s" else axis): size for axis, size in zip(axes, shape)}
        return Layout(sizes=sizes)
    height, width = image_dimensions(name, data)
    return Layout(sizes={"y": height, "x": width})


#: Upload name endings whose planes (channel, z, t) a picker offers: OME-TIFF and zipped OME-Zarr.
OME_UPLOAD_SUFFIXES: tuple[str, ...] = (".ome.tif", ".ome.tiff", ".zip")


def upload_plane_choices(name: str, data: bytes) -> dict[str, int]:
    """The axes of an OME-TIFF or zipped OME-Zarr upload a user may choose a plane along
    (:attr:`Layout.choices`, e.g. ``{"c": 2, "z": 4}``); empty for any other file, whose pages
    (a plain TIFF stack) are offered as planes instead.

    Raises
    ------
    DatasetError
        The OME file cannot be read.
    """
    if not name.lower().endswith(OME_UPLOAD_SUFFIXES):
        return {}
    return upload_layout(name, data).choices


#: Colour samples a planar TIFF holds when it may as well be a stack of grey planes.
AMBIGUOUS_SAMPLES = 3


def planar_colour_tiff(data: bytes) -> bool:
    """Whether a (non-OME) TIFF holds its image as :data:`AMBIGUOUS_SAMPLES` colour samples stored
    plane by plane (axes ``SYX``): how tifffile, among others, writes a (3, H, W) array, which is
    as often a stack of 3 grey planes as an RGB image. Such a file is read as RGB (what its header
    says); :func:`read_samples_as_planes` reads it as 3 grey planes instead. Interleaved RGB
    (``YXS``, how colour images are normally stored) is not ambiguous."""
    if data[:4] not in _TIFF_MAGIC:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            return (not tif.is_ome and series.axes == "SYX"
                    and int(series.shape[0]) == AMBIGUOUS_SAMPLES)
    except Exception:  # noqa: BLE001 - not readable: the reader says why
        return False


def read_samples_as_planes(name: str, data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """The colour samples of a :func:`planar_colour_tiff` as grey planes, (3, H, W, 1), native dtype.

    Raises
    ------
    DatasetError
        The file is not such a TIFF, is unreadable, or holds more than ``max_pixels`` pixels.
    """
    import tifffile

    if not planar_colour_tiff(data):
        raise DatasetError(f"{name}: not a TIFF of {AMBIGUOUS_SAMPLES} planar colour samples")
    check_declared_size(name, data, max_pixels)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            array = tif.series[0].asarray()
    except Exception as error:  # noqa: BLE001
        raise DatasetError(f"{name}: unreadable or corrupt TIFF ({type(error).__name__}: {str(error)[:160]})") from None
    planes = np.stack([_native_dtype(sample, name) for sample in array])
    return np.ascontiguousarray(planes[..., None])


def image_dimensions(name: str, data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> tuple[int, int]:
    """(height, width) from the header of a PNG / JPEG / TIFF (its first page), without decoding the pixels.

    Raises
    ------
    DatasetError
        When the header cannot be read, or declares an image too large for Pillow to
        open at all (reported as over the limit of ``max_pixels``).
    """
    height, width, _ = _declared_sizes(name, data, max_pixels)[0]
    return height, width


def _limit_side(max_pixels: int) -> str:
    side = int(math.sqrt(max_pixels))
    return f"about {side:,} x {side:,}"


def _declared_sizes(name: str, data: bytes, max_pixels: int) -> list[tuple[int, int, int]]:
    """(height, width, planes) of every page the header declares: one for PNG / JPEG, each
    page of a TIFF (``planes`` > 1 only for volumetric TIFF pages).

    Only headers are read. Pillow's decompression-bomb guard is handled here, locally:
    its warning (above ``Image.MAX_IMAGE_PIXELS``) is silenced since the caller applies its
    own, lower limit, and its error (above twice that, raised before the size is known)
    is reported as an image over the limit. The global ``MAX_IMAGE_PIXELS`` is never changed.
    """
    from PIL import Image

    try:
        if data[:4] in _TIFF_MAGIC:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                pages = [(int(page.imagelength), int(page.imagewidth), max(1, int(page.imagedepth or 1)))
                         for page in tif.pages]
            if not pages:
                raise ValueError("no image pages")
            return pages
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                return [(int(height), int(width), 1)]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DatasetError(f"{name}: its header declares an image far over the limit of {max_pixels:,} pixels "
                           f"({_limit_side(max_pixels)}); crop or downscale it first") from None
    except Exception as error:  # any header failure means the file is not a readable image
        detail = "" if "cannot identify image file" in str(error) else f" ({type(error).__name__}: {str(error)[:160]})"
        raise _UnreadableHeader(f"{name}: not a readable PNG, JPEG or TIFF image: the file is of another type "
                                f"or corrupt{detail}") from None


class _UnreadableHeader(DatasetError):
    """A header that cannot be read (as opposed to one that declares too many pixels)."""


# ---- masks ----------------------------------------------------------------------------------


def read_label_image(source: Any, plane: Plane | None = None) -> np.ndarray:
    """Read one mask file as a 2-D label array (an OME-TIFF's or OME-Zarr's plane ``plane``, channel 0).

    Returns
    -------
    ndarray, shape (H, W)
        bool or a non-negative integer dtype. Palette PNGs give palette indices; an RGB(A)
        mask whose colour channels are equal gives one channel.

    Raises
    ------
    DatasetError
        Unreadable file, colour mask with differing channels, float values that are not whole
        numbers, negative values.
    """
    zarr_path = _zarr_folder(source)
    if zarr_path is not None:
        array, label = read_ome_zarr(zarr_path, plane, max_pixels=MAX_FILE_PIXELS, for_labels=True), str(zarr_path)
    else:
        data, label = _source_bytes(source)
        array = _decode(data, label, palette_indices=True, plane=plane, for_labels=True)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3:
        channels = array.shape[2]
        colour = array[:, :, :3] if channels >= 3 else array[:, :, :1]
        if channels in (3, 4) and not (
            np.array_equal(colour[:, :, 0], colour[:, :, 1]) and np.array_equal(colour[:, :, 0], colour[:, :, 2])
        ):
            raise DatasetError(
                f"{label}: mask is neither binary nor a label image: a {channels}-channel mask whose "
                "colour channels differ (save masks as one grey channel)"
            )
        array = colour[:, :, 0]
    if array.ndim != 2:
        raise DatasetError(f"{label}: expected a 2-D mask, got an array of shape {array.shape}")
    return check_label_values(array, label)


def check_label_values(array: np.ndarray, label: str) -> np.ndarray:
    """Return ``array`` as bool or non-negative integers, or raise if it holds other values."""
    if array.dtype == bool or array.dtype == np.uint8 or array.dtype == np.uint16:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DatasetError(
                f"{label}: mask is neither binary nor a label image: it holds fractional float values "
                "(a probability map?); save 0/1, 0/255 or integer instance ids"
            )
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(f"{label}: unsupported mask pixel type {array.dtype}")
    if array.size and int(array.min()) < 0:
        raise DatasetError(f"{label}: mask holds negative values (min {int(array.min())})")
    return array


def distinct_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a bincount for bool/uint8, which is much faster than np.unique."""
    if array.dtype == bool:
        array = array.view(np.uint8)
    if array.dtype == np.uint8:
        return np.flatnonzero(np.bincount(array.ravel(), minlength=256))
    return np.unique(array)


def binary_mask(labels: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """The positive pixels of a binary label array: the larger of its two values.

    One distinct value means all-background (0) or all-foreground (anything else).
    """
    values = distinct_values(labels) if values is None else values
    if len(values) == 2:
        return labels == values[1]
    return labels > 0


def mask_from_labels(labels: np.ndarray, connectivity: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Binary mask and instance labels from one 2-D mask array.

    Parameters
    ----------
    labels : ndarray, shape (H, W), bool or non-negative integers
    connectivity : int
        1 (4-neighbours) or 2 (8-neighbours) for connected components of a binary mask.
    label : str
        Names the file in messages.

    Returns
    -------
    mask : ndarray, bool, shape (H, W)
    instances : ndarray, shape (H, W), uint16 or int32 (see ``compact_labels``)
        A binary mask (at most two distinct values) gives the connected components of its
        positive pixels; a label image (more than two values) gives its labels renumbered 1..N
        in order, and its mask is ``labels > 0``.
    """
    from skimage.measure import label as connected_components
    from skimage.segmentation import relabel_sequential

    values = distinct_values(labels)
    if len(values) <= 2:
        mask = binary_mask(labels, values)
        instances = connected_components(mask, connectivity=connectivity)
    else:
        mask = labels > 0
        instances = relabel_sequential(labels.astype(np.int64, copy=False))[0]
    return mask, compact_labels(instances)


def compact_labels(instances: np.ndarray) -> np.ndarray:
    """Store instance ids as uint16 when they fit (half the memory of int32), else int32."""
    top = int(instances.max()) if instances.size else 0
    if top > np.iinfo(np.int32).max:
        raise DatasetError(f"more than 2**31 instance ids ({top}) in one image")
    return instances.astype(np.uint16 if top <= 65535 else np.int32, copy=False)


# ---- stacks ---------------------------------------------------------------------------------


def read_stack(path: Path) -> np.ndarray:
    """Read a multi-page TIFF stack.

    Returns
    -------
    ndarray, shape (N, H, W), the file's dtype (a single page gives N = 1)

    Raises
    ------
    DatasetError
        Missing or corrupt file, or pages that are not single-channel 2-D images.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            declared = sum(int(page.imagelength) * int(page.imagewidth) * max(1, int(page.imagedepth or 1))
                           for page in tif.pages)
    except Exception as error:
        raise DatasetError(f"{path}: unreadable or corrupt TIFF stack ({type(error).__name__}: {error})") from None
    if declared > MAX_STACK_PIXELS:
        raise DatasetError(f"{path}: the stack declares {declared:,} pixels, over the limit of "
                           f"{MAX_STACK_PIXELS:,}; split it or crop it first")
    try:
        stack = tifffile.imread(path)
    except Exception as error:
        raise DatasetError(f"{path}: unreadable or corrupt TIFF stack ({type(error).__name__}: {error})") from None
    if stack.size == 0:  # tifffile returns an empty array, with a logged warning, for a broken page table
        raise DatasetError(f"{path}: unreadable or corrupt TIFF stack (no readable pages)")
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise DatasetError(f"{path}: expected a stack of grey pages (N, H, W), got shape {stack.shape}")
    return stack
