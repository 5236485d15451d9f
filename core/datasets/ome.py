"""OME-TIFF and OME-Zarr: one 2-D plane out of a multi-dimensional image, and OME-Zarr labels written back.

Microscopy files hold more than one picture: channels (``C``), z-planes (``Z``) and time points
(``T``). A :class:`Plane` says which one U-Net Lab reads:

- ``channel``: one channel by index, or None: every channel when the file has 1 or 3 (grey or
  colour), else channel 0 (with a :class:`~core.errors.DatasetWarning` saying so);
- ``z``: the z-plane (None: plane 0, with a warning when there are several); ``t``: the time point.

OME-TIFF is read with tifffile, one page per plane, so a large stack is never decoded whole.
OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3) is read with zarr: :class:`OmeZarrImage` is a lazy
view whose :meth:`~OmeZarrImage.read` decodes only the chunks a region needs, which is how
:mod:`core.ome_predict` predicts an image tile by tile. :func:`create_labels` adds an OME-Zarr
*labels group* (``image.zarr/labels/NAME``) aligned with the image (the channel axis dropped; only
the predicted plane is written, other planes stay the fill value 0 and take no space).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DatasetError, DatasetWarning

#: The axes a 2-D plane is cut from; anything else is refused.
KNOWN_AXES = "tczyx"
#: File in a dataset folder that names the plane to read from multi-dimensional images.
PLANE_FILE = "unetlab.json"
OME_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr", ".zarr")


@dataclass(frozen=True)
class Plane:
    """Which 2-D image of a multi-dimensional file to read (see the module docstring)."""

    channel: int | None = None
    z: int | None = None
    t: int = 0

    def describe(self) -> str:
        parts = [f"channel {self.channel}" if self.channel is not None else "",
                 f"z {self.z}" if self.z is not None else "", f"t {self.t}" if self.t else ""]
        return ", ".join(part for part in parts if part) or "the default plane"


@dataclass(frozen=True)
class Layout:
    """The axes of a multi-dimensional image: ``sizes`` axis -> length (keys among t, c, z, y, x),
    ``channel_names`` where the file names them. What a page needs to offer a channel / plane picker."""

    sizes: dict[str, int]
    channel_names: tuple[str, ...] = ()

    @property
    def choices(self) -> dict[str, int]:
        """The axes with more than one position (t, c, z): what a user may choose."""
        return {axis: size for axis, size in self.sizes.items() if axis in "tcz" and size > 1}


def strip_suffix(name: str) -> str:
    """A file stem without ``.ome.tif``/``.ome.tiff``/``.ome.zarr``/``.zarr``/other suffix:
    ``a.ome.tif`` -> ``a``, ``a.png`` -> ``a`` (how images and masks are matched)."""
    lower = name.lower()
    for suffix in OME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_plane_file(root: Path) -> Plane | None:
    """The :class:`Plane` named by ``root/unetlab.json`` (``{"channel": 1, "z": 4, "t": 0}``), or None.

    Raises
    ------
    DatasetError
        The file is not a JSON object of non-negative integers under those keys.
    """
    path = Path(root) / PLANE_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict) or set(values) - {"channel", "z", "t"}:
            raise ValueError("expected an object with the keys channel, z and t only")
        for key, value in values.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        return Plane(channel=values.get("channel"), z=values.get("z"), t=values.get("t") or 0)
    except (ValueError, OSError) as error:
        raise DatasetError(f"{path}: {error} (e.g. {{\"channel\": 0, \"z\": 5, \"t\": 0}})") from None


# ---- choosing a plane ------------------------------------------------------------------------------


def plane_index(axes: str, shape: tuple[int, ...], plane: Plane | None, label: str,
                for_labels: bool = False) -> tuple[tuple[Any, ...], str]:
    """The index that cuts ``plane`` out of an array with ``axes`` (lower-case letters of t, c, z, y,
    x, and s for samples), and the axes that remain (``"yx"``, ``"yxs"`` or ``"cyx"``...).

    Warns (DatasetWarning) when a default was taken among several channels or z-planes.

    Raises
    ------
    DatasetError
        An axis we cannot cut, or a chosen index outside the file's range (naming both).
    """
    plane = plane or Plane()
    axes = axes.lower()
    unknown = [axis for axis in axes if axis not in KNOWN_AXES + "s"]
    if unknown:
        raise DatasetError(f"{label}: axes {axes!r} include {''.join(unknown)!r}; only t, c, z, y, x are read")
    sizes = dict(zip(axes, shape))
    index: list[Any] = []
    for axis, size in zip(axes, shape):
        if axis in "yxs":
            index.append(slice(None))
            continue
        if axis == "c":
            if for_labels:
                choice = 0
            elif plane.channel is None:
                if size in (1, 3) and "s" not in axes:
                    index.append(slice(None))
                    continue
                choice = 0
                if size > 1:
                    warnings.warn(DatasetWarning(f"{label}: {size} channels; channel 0 read (choose another with "
                                                 f"a channel setting, e.g. {PLANE_FILE} in a dataset folder)"),
                                  stacklevel=3)
            else:
                choice = plane.channel
        elif axis == "z":
            choice = 0 if plane.z is None else plane.z
            if plane.z is None and size > 1:
                warnings.warn(DatasetWarning(f"{label}: {size} z-planes; plane 0 read (choose another with a z "
                                             "setting)"), stacklevel=3)
        else:
            choice = plane.t
        if not 0 <= choice < size:
            name = {"c": "channel", "z": "z-plane", "t": "time point"}[axis]
            raise DatasetError(f"{label}: {name} {choice} does not exist; the file has {size} ({name}s 0..{size - 1})")
        index.append(choice)
    remaining = "".join(axis for axis, item in zip(axes, index) if isinstance(item, slice))
    if "y" not in sizes or "x" not in sizes:
        raise DatasetError(f"{label}: axes {axes!r} have no y and x")
    return tuple(index), remaining


def to_hwc(array: np.ndarray, axes: str) -> np.ndarray:
    """An array with ``axes`` among c, y, x, s (after :func:`plane_index`) as (H, W, C)."""
    axes = axes.replace("s", "c")
    order = [axes.index("y"), axes.index("x")] + ([axes.index("c")] if "c" in axes else [])
    array = np.transpose(array, order)
    return array if array.ndim == 3 else array[:, :, None]


# ---- OME-TIFF --------------------------------------------------------------------------------------


def tiff_layout(tif: Any) -> tuple[str, tuple[int, ...]]:
    """(axes, shape) of a TIFF's first series, axes lower-case (tifffile's ``Q``/``I`` read as z)."""
    series = tif.series[0]
    axes = series.axes.lower().replace("q", "z").replace("i", "z")
    return axes, tuple(int(n) for n in series.shape)


def read_tiff_plane(tif: Any, plane: Plane | None, label: str, for_labels: bool = False) -> np.ndarray:
    """One plane of a (multi-dimensional) TIFF as (H, W, C), decoding only its pages when each page
    holds one plane (as OME-TIFF writers store them)."""
    series = tif.series[0]
    axes, shape = tiff_layout(tif)
    if axes.count("z") > 1:
        raise DatasetError(f"{label}: unsupported TIFF axes {series.axes!r}")
    index, remaining = plane_index(axes, shape, plane, label, for_labels)
    outer = [i for i, axis in enumerate(axes) if axis not in "yxs"]
    page_axes = "".join(axes[i] for i in range(len(axes)) if i not in outer)
    pages = series.pages
    if outer and len(pages) == int(np.prod([shape[i] for i in outer])) and page_axes in ("yx", "yxs"):
        # Pages in row-major order over the outer axes: decode only the ones the plane needs.
        ranges = [range(shape[i]) if isinstance(index[i], slice) else [index[i]] for i in outer]
        grid = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, len(outer))
        numbers = np.ravel_multi_index(grid.T, [shape[i] for i in outer])
        planes = np.stack([pages[int(n)].asarray() for n in numbers])
        kept = [axes[i] for i in outer if isinstance(index[i], slice)]
        planes = planes.reshape([len(r) for r, i in zip(ranges, outer) if isinstance(index[i], slice)]
                                + list(planes.shape[1:]))
        return to_hwc(planes, "".join(kept) + page_axes)
    return to_hwc(series.asarray()[index], remaining)


def tiff_is_multidimensional(tif: Any) -> bool:
    """True for an OME-TIFF, or any TIFF whose first series has t, c or z axes of length > 1."""
    if tif.is_ome:
        return True
    axes, shape = tiff_layout(tif)
    return any(axis in "tcz" and size > 1 for axis, size in zip(axes, shape))


# ---- OME-Zarr ---------------------------------------------------------------------------------------


def zarr_metadata(attributes: dict[str, Any]) -> dict[str, Any]:
    """The OME metadata of a zarr group: under ``"ome"`` (NGFF 0.5, zarr v3) or at the top (0.4)."""
    return attributes.get("ome", attributes) if isinstance(attributes.get("ome"), dict) else attributes


def is_ome_zarr(path: str | Path) -> bool:
    """True for a folder that is an OME-Zarr image (its group attributes hold ``multiscales``)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for name in ("zarr.json", ".zattrs"):
        file = path / name
        if file.is_file():
            try:
                values = json.loads(file.read_text())
            except (OSError, ValueError):
                return False
            values = values.get("attributes", values) if name == "zarr.json" else values
            return "multiscales" in zarr_metadata(values)
    return False


@dataclass
class OmeZarrImage:
    """A lazy OME-Zarr image (its full-resolution level): nothing is read until :meth:`read`."""

    path: Path
    group: Any
    array: Any
    axes: str
    metadata: dict[str, Any]
    zarr_format: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def height(self) -> int:
        return self.shape[self.axes.index("y")]

    @property
    def width(self) -> int:
        return self.shape[self.axes.index("x")]

    def layout(self) -> Layout:
        names = ()
        omero = self.metadata.get("omero") or {}
        if isinstance(omero.get("channels"), list):
            names = tuple(str(channel.get("label", i)) for i, channel in enumerate(omero["channels"]))
        return Layout(sizes=dict(zip(self.axes, self.shape)), channel_names=names)

    def read(self, plane: Plane | None = None, rows: slice = slice(None), columns: slice = slice(None),
             for_labels: bool = False) -> np.ndarray:
        """The region ``rows`` x ``columns`` of one plane as (h, w, C); only its chunks are decoded."""
        index, remaining = plane_index(self.axes, self.shape, plane, str(self.path), for_labels)
        index = tuple(rows if axis == "y" else columns if axis == "x" else item
                      for axis, item in zip(self.axes, index))
        return to_hwc(np.asarray(self.array[index]), remaining)


def open_ome_zarr(path: str | Path, mode: str = "r", store: Any = None, group_path: str = "") -> OmeZarrImage:
    """Open an OME-Zarr image (NGFF 0.4 or 0.5) without reading pixels; ``store`` (with the group's
    ``group_path`` in it) instead of the folder ``path`` for an image inside a zip file.

    Raises
    ------
    DatasetError
        Not a zarr group, no ``multiscales`` metadata, or axes other than t, c, z, y, x.
    """
    import zarr

    path = Path(path)
    try:
        group = (zarr.open_group(str(path), mode=mode) if store is None
                 else zarr.open_group(store, mode=mode, path=group_path or None))
        attributes = dict(group.attrs)
    except Exception as error:  # noqa: BLE001 - zarr raises many kinds for a folder that is not a group
        raise DatasetError(f"{path}: not a readable zarr group ({type(error).__name__}: {str(error)[:160]})") from None
    metadata = zarr_metadata(attributes)
    multiscales = metadata.get("multiscales")
    if not multiscales:
        raise DatasetError(f"{path}: a zarr group without OME 'multiscales' metadata (not an OME-Zarr image)")
    first = multiscales[0]
    axes = "".join((axis["name"] if isinstance(axis, dict) else str(axis))[0].lower()
                   for axis in first.get("axes", ["t", "c", "z", "y", "x"]))
    array = group[first["datasets"][0]["path"]]
    if len(axes) != array.ndim or any(axis not in KNOWN_AXES for axis in axes):
        raise DatasetError(f"{path}: axes {axes!r} do not fit its {array.ndim}-D array; t, c, z, y, x are read")
    zarr_format = int(getattr(getattr(group, "metadata", None), "zarr_format", 2) or 2)
    return OmeZarrImage(path=path, group=group, array=array, axes=axes, metadata=metadata, zarr_format=zarr_format)


def read_ome_zarr(path: str | Path, plane: Plane | None = None, max_pixels: int | None = None,
                  for_labels: bool = False) -> np.ndarray:
    """One plane of an OME-Zarr image as (H, W, C) in its own dtype.

    Raises
    ------
    DatasetError
        See :func:`open_ome_zarr`; a plane over ``max_pixels`` (predict such images tile by tile).
    """
    image = open_ome_zarr(path)
    if max_pixels is not None and image.height * image.width > max_pixels:
        raise DatasetError(f"{path}: {image.width} x {image.height} pixels is over the limit of {max_pixels:,} for "
                           "reading it whole; `unetlab predict` segments it tile by tile")
    return image.read(plane, for_labels=for_labels)


# ---- labels written back ------------------------------------------------------------------------------


def _set_ome(group: Any, zarr_format: int, values: dict[str, Any]) -> None:
    """Write OME metadata as the image's format does: under "ome" (v3, NGFF 0.5) or at the top (v2, 0.4)."""
    if zarr_format >= 3:
        group.attrs["ome"] = {"version": "0.5", **values}
    else:
        group.attrs.update(values)


def create_labels(image: OmeZarrImage, name: str, dtype: str = "int32", chunk: int = 1024) -> Any:
    """Create (or replace) the labels group ``image.zarr/labels/NAME`` aligned with ``image``:
    the image's axes without c, one chunk per plane of at most ``chunk`` x ``chunk`` pixels, fill 0.

    Returns the zarr array to write labels into (shape: the image's without its channel axis).
    """
    import zarr

    group = zarr.open_group(str(image.path), mode="r+")
    labels_group = group.require_group("labels")
    existing = list(zarr_metadata(dict(labels_group.attrs)).get("labels", []))
    if name in labels_group:
        del labels_group[name]
    target = labels_group.create_group(name)
    axes = [axis for axis in image.axes if axis != "c"]
    shape = tuple(size for axis, size in zip(image.axes, image.shape) if axis != "c")
    chunks = tuple(min(chunk, size) if axis in "yx" else 1 for axis, size in zip(axes, shape))
    if hasattr(target, "create_array"):  # zarr 3
        array = target.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    else:  # zarr 2
        array = target.zeros("0", shape=shape, chunks=chunks, dtype=dtype)
    source = zarr_metadata(dict(group.attrs))["multiscales"][0]
    transforms = source["datasets"][0].get("coordinateTransformations")
    dataset: dict[str, Any] = {"path": "0"}
    if transforms:
        keep = [i for i, axis in enumerate(image.axes) if axis != "c"]
        dataset["coordinateTransformations"] = [
            {**t, t["type"]: [t[t["type"]][i] for i in keep]} if t.get("type") in ("scale", "translation")
            and isinstance(t.get(t["type"]), list) else t for t in transforms]
    axis_types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    source_axes = {(a["name"] if isinstance(a, dict) else a)[0].lower(): a for a in source.get("axes", [])}
    multiscales = [{"version": "0.4", "name": name,
                    "axes": [source_axes.get(axis) if isinstance(source_axes.get(axis), dict)
                             else {"name": axis, "type": axis_types[axis]} for axis in axes],
                    "datasets": [dataset]}]
    if image.zarr_format >= 3:
        multiscales[0].pop("version")
    _set_ome(target, image.zarr_format, {"multiscales": multiscales,
                                         "image-label": {"version": "0.4", "source": {"image": "../../"}}}
             if image.zarr_format < 3 else {"multiscales": multiscales, "image-label": {"source": {"image": "../../"}}})
    _set_ome(labels_group, image.zarr_format, {"labels": sorted(set(existing) | {name})})
    return array


def labels_index(image: OmeZarrImage, plane: Plane | None, rows: slice, columns: slice) -> tuple[Any, ...]:
    """Where a region of ``plane`` goes in the labels array of :func:`create_labels` (no channel axis)."""
    index, _ = plane_index(image.axes, image.shape, plane, str(image.path), for_labels=True)
    return tuple(rows if axis == "y" else columns if axis == "x" else item
                 for axis, item in zip(image.axes, index) if axis != "c")


def zipped_zarr_root(names: list[str]) -> str | None:
    """The folder (inside a zip's member ``names``) holding an OME-Zarr group: the shallowest one with
    ``zarr.json`` or ``.zattrs``; "" for the zip's root, None when there is none."""
    roots = sorted((name.rsplit("/", 1)[0] if "/" in name else "" for name in names
                    if name.rsplit("/", 1)[-1] in ("zarr.json", ".zattrs")), key=lambda root: root.count("/"))
    return roots[0] if roots else None
