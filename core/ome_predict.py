"""Predicting an OME-Zarr image block by block, its labels written back as an OME-Zarr labels group.

An OME-Zarr image can be far larger than memory. :func:`predict_ome_zarr` never loads it whole:

1. the plane is cut into blocks of ``block`` x ``block`` pixels; each block is read with a halo
   of ``halo`` pixels on every side (only the chunks it touches are decoded), predicted with the
   usual tiled, blended prediction (:func:`core.predict.predict_probabilities`), and cropped back
   to the block, so the network sees context across block borders;
2. the block's mask (probability >= threshold) is labelled by connected components, the ids
   offset past the previous blocks', and written to ``image.zarr/labels/NAME`` (see
   :func:`core.datasets.ome.create_labels`);
3. objects cut by a block border are joined: the labels on both sides of every border are read
   (one row or column each), touching pairs (by the dataset's connectivity) are united, and a
   second pass over the blocks renumbers every object to 1..N.

Memory: one block with its halo (image, probabilities, labels) plus one row or column of the
image per border and an id table of one integer per object. The result equals connected
components of the whole-image mask, with probabilities that differ from a whole-image prediction
only where tiles are blended differently (inside the halo's reach).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from core.datasets.ome import Plane, create_labels, labels_index, open_ome_zarr
from core.errors import UNetLabError

#: Side of the blocks read at a time (pixels) and the context read around each.
DEFAULT_BLOCK, DEFAULT_HALO = 1024, 64


@dataclass
class ZarrPrediction:
    """What :func:`predict_ome_zarr` wrote: ``labels`` the labels group's path inside the image,
    ``objects`` their number, ``blocks`` how many blocks were predicted, ``largest_read`` the most
    pixels read at once (one block with its halo), ``seconds`` the wall time."""

    source: str
    plane: str
    labels: str
    objects: int
    blocks: int
    largest_read: int
    seconds: float
    shape: tuple[int, int]
    threshold: float
    details: dict[str, Any] = field(default_factory=dict)


def block_starts(length: int, block: int) -> list[int]:
    """Start offsets of blocks of ``block`` pixels covering ``[0, length)`` (the last one shorter)."""
    return list(range(0, length, block))


def iter_blocks(height: int, width: int, block: int) -> Iterator[tuple[slice, slice]]:
    """(rows, columns) of every block, row by row."""
    for top in block_starts(height, block):
        for left in block_starts(width, block):
            yield slice(top, min(top + block, height)), slice(left, min(left + block, width))


def with_halo(part: slice, halo: int, length: int) -> tuple[slice, slice]:
    """The part grown by ``halo`` on both sides (clipped to the image), and where the part lies in it."""
    start, stop = max(0, part.start - halo), min(length, part.stop + halo)
    return slice(start, stop), slice(part.start - start, part.start - start + (part.stop - part.start))


def touching_pairs(first: np.ndarray, second: np.ndarray, connectivity: int) -> np.ndarray:
    """(n, 2) pairs of object ids facing each other across a border: ``first`` and ``second`` are the
    label rows (or columns) on its two sides; 8-connectivity also joins diagonal neighbours."""
    pairs = [np.stack([first, second], axis=1)]
    if connectivity == 2:
        pairs += [np.stack([first[1:], second[:-1]], axis=1), np.stack([first[:-1], second[1:]], axis=1)]
    pairs = np.concatenate(pairs)
    return pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]


def merge_table(n_labels: int, pairs: np.ndarray) -> np.ndarray:
    """int64 (n_labels + 1,): old id -> new id 1..N (0 stays 0), ids in ``pairs`` joined."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    size = n_labels + 1
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    # Renumber components in order of their smallest id, background (id 0's component) first.
    _, first = np.unique(component, return_index=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[component].astype(np.int64)


def predict_ome_zarr(loaded: Any, path: str | Path, plane: Plane | None = None, *, name: str = "unetlab",
                     threshold: float | None = None, block: int = DEFAULT_BLOCK, halo: int = DEFAULT_HALO,
                     tile_size: int | None = None, overlap: int | None = None, connectivity: int = 2,
                     reader: Callable[[Any], Any] | None = None,
                     on_block: Callable[[int, int], None] | None = None) -> ZarrPrediction:
    """Segment one plane of an OME-Zarr image block by block and write its instance labels into
    ``path/labels/NAME`` (see the module docstring).

    Parameters
    ----------
    loaded : core.inference.LoadedModel
    path : the OME-Zarr image folder (written to: its labels group)
    plane : the channel(s), z-plane and time point to segment
    name : the labels group's name (replaced if it exists)
    threshold : foreground threshold (default: the run's)
    block, halo : block side and context read around it, pixels
    tile_size, overlap : the network's tiles within a block (default: the run's)
    connectivity : 1 (4-neighbours) or 2 (8-neighbours) for objects
    reader : wraps the image's zarr array before reading (tests count what is read)
    on_block : called with (blocks done, blocks in all)

    Returns
    -------
    ZarrPrediction
    """
    from core.inference import tile_settings
    from core.predict import predict_probabilities
    from skimage.measure import label as connected_components

    started = time.perf_counter()
    if block < 16 or halo < 0:
        raise UNetLabError(f"block must be at least 16 pixels and halo 0 or more, got {block} and {halo}")
    threshold = loaded.config.threshold if threshold is None else float(threshold)
    image = open_ome_zarr(path)
    if reader is not None:
        image.array = reader(image.array)
    height, width = image.height, image.width
    settings = tile_settings(loaded.config, tile_size, overlap)
    labels = create_labels(image, name, chunk=block)
    blocks = list(iter_blocks(height, width, block))
    next_id, largest = 0, 0
    for number, (rows, columns) in enumerate(blocks, start=1):
        read_rows, inner_rows = with_halo(rows, halo, height)
        read_columns, inner_columns = with_halo(columns, halo, width)
        region = image.read(plane, read_rows, read_columns)
        largest = max(largest, region.shape[0] * region.shape[1])
        probability = predict_probabilities(loaded.model, region, settings, loaded.device, loaded.precision,
                                            channels_last=loaded.channels_last, channels=loaded.channels,
                                            source=f"{path} block {number}")[inner_rows, inner_columns]
        objects = connected_components(probability >= threshold, connectivity=connectivity).astype(np.int64)
        count = int(objects.max(initial=0))
        objects[objects > 0] += next_id
        next_id += count
        labels[labels_index(image, plane, rows, columns)] = objects.astype(np.int32)
        if on_block is not None:
            on_block(number, len(blocks))

    # Join objects across block borders, then renumber them 1..N block by block.
    pairs = [np.zeros((0, 2), np.int64)]
    for border in block_starts(height, block)[1:]:
        above = np.asarray(labels[labels_index(image, plane, slice(border - 1, border), slice(None))]).reshape(-1)
        below = np.asarray(labels[labels_index(image, plane, slice(border, border + 1), slice(None))]).reshape(-1)
        pairs.append(touching_pairs(above, below, connectivity))
    for border in block_starts(width, block)[1:]:
        left = np.asarray(labels[labels_index(image, plane, slice(None), slice(border - 1, border))]).reshape(-1)
        right = np.asarray(labels[labels_index(image, plane, slice(None), slice(border, border + 1))]).reshape(-1)
        pairs.append(touching_pairs(left, right, connectivity))
    table = merge_table(next_id, np.concatenate(pairs).astype(np.int64))
    if len(blocks) > 1 or next_id:
        for rows, columns in blocks:
            where = labels_index(image, plane, rows, columns)
            labels[where] = table[np.asarray(labels[where])].astype(np.int32)
    return ZarrPrediction(source=str(path), plane=(plane or Plane()).describe(), labels=f"labels/{name}",
                          objects=int(table.max(initial=0)), blocks=len(blocks), largest_read=largest,
                          seconds=time.perf_counter() - started, shape=(height, width), threshold=threshold,
                          details={"block": block, "halo": halo, "tile_size": settings.tile_size,
                                   "overlap": settings.overlap, "connectivity": connectivity})
