"""Tiled prediction: a probability map for an image of any size.

The image is cut into overlapping square tiles, each tile goes through the model in
batches, and the tile outputs are blended with a smooth window that falls towards the
tile edges, where a convolutional network sees the least context. Memory grows with the
tile and batch size plus two float32 maps of the image size, never with a whole-image
forward pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from core.errors import UNetLabError


@dataclass(frozen=True)
class TileSettings:
    """How an image is cut for prediction.

    tile_size : side of the square tiles (images smaller than this go through whole).
    overlap : pixels shared by neighbouring tiles; blending hides seams inside this band.
    batch_size : tiles per forward pass.
    flip_tta : average the prediction over the four flips (horizontal, vertical, both).
    """

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 4
    flip_tta: bool = False

    def __post_init__(self) -> None:
        if self.tile_size < 16:
            raise UNetLabError(f"tile_size must be at least 16 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise UNetLabError(f"overlap must be in [0, tile_size), got {self.overlap} for tile {self.tile_size}")
        if self.batch_size < 1:
            raise UNetLabError("batch_size must be at least 1")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``; the last tile ends at ``length``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blending_ramp(length: int, overlap: int) -> np.ndarray:
    """float32 (length,) weights: 1 in the middle, a raised-cosine ramp over ``overlap`` pixels
    at each end, never exactly 0 so pixels that only one tile covers stay defined."""
    weights = np.ones(length, np.float32)
    band = min(overlap, length // 2)
    if band > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(band) + 0.5) / band)
        weights[:band] = rise
        weights[length - band:] = rise[::-1]
    return np.maximum(weights, np.float32(1e-3))


def blending_window(height: int, width: int, overlap: int) -> np.ndarray:
    """float32 (height, width) weights: the outer product of two :func:`blending_ramp`."""
    return np.outer(blending_ramp(height, overlap), blending_ramp(width, overlap)).astype(np.float32)


def iter_tiles(height: int, width: int, settings: TileSettings) -> Iterator[tuple[int, int, int, int]]:
    """(top, left, tile_height, tile_width) of every tile, row by row."""
    tile_h, tile_w = min(settings.tile_size, height), min(settings.tile_size, width)
    for top in tile_starts(height, tile_h, settings.overlap):
        for left in tile_starts(width, tile_w, settings.overlap):
            yield top, left, tile_h, tile_w


def match_channels(image: np.ndarray, channels: int, source: str = "the image") -> np.ndarray:
    """Adapt an (H, W, C) image to a model's input channels.

    Grey becomes RGB by repetition and RGB becomes grey by the channel mean, so a model
    trained on one kind still segments the other; any other mismatch is an error.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == channels:
        return image
    if image.shape[2] == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 3 and channels == 1:
        return image.mean(axis=2, keepdims=True)
    raise UNetLabError(f"{source} has {image.shape[2]} channels; the model expects {channels}")


def autocast_context(device: torch.device, precision: str):
    """The autocast context for a resolved precision ("fp32", "bf16" or "fp16")."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def tile_as_float(tile: np.ndarray, channels: int | None, source: str = "the image") -> np.ndarray:
    """One tile as float32 (h, w, C) in [0, 1], with the model's channels.

    uint8 is divided by 255 and uint16 by 65535 (as the loaders do); floats are kept. Doing
    this per tile keeps a large image in its native dtype (a quarter of float32's memory).
    """
    if tile.dtype == np.uint8:
        tile = tile.astype(np.float32) * np.float32(1 / 255)
    elif tile.dtype == np.uint16:
        tile = tile.astype(np.float32) * np.float32(1 / 65535)
    else:
        tile = tile.astype(np.float32, copy=False)
    return tile if channels is None else match_channels(tile, channels, source)


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module,
    image: np.ndarray,
    settings: TileSettings | None = None,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    channels: int | None = None,
    source: str = "the image",
    outputs: int = 1,
) -> np.ndarray:
    """Probability of the positive class (and of any further output channel) for every pixel.

    Parameters
    ----------
    model : torch.nn.Module
        Maps (N, C, h, w) float tensors to (N, 1, h, w) logits; put in eval mode here.
    image : ndarray, shape (H, W, C) or (H, W)
        float32 intensities in [0, 1], or uint8 / uint16 (scaled tile by tile, so a large
        image is never held as float32 whole).
    settings : TileSettings
        Tile size, overlap, batch size and flip test-time augmentation.
    device, precision, channels_last
        Where and how to run the model; ``precision`` is "fp32", "bf16" or "fp16".
    channels : int, optional
        The model's input channels: each tile is adapted (grey repeated to RGB, RGB averaged
        to grey); None when the image already has them.
    source : str
        How an error names the image.
    outputs : int
        The model's output channels, each a sigmoid probability (2 for a mask+contour model).

    Returns
    -------
    ndarray, float32, values in [0, 1]: shape (H, W) for one output, (outputs, H, W) for several.

    Notes
    -----
    Memory beyond the image: one float32 (H, W) map per output and a batch of tiles. The blending
    weights of a regular grid of equal tiles are separable (the window is an outer product
    of two 1-D ramps), so their sum is the outer product of two 1-D sums and is never stored
    as an image.
    """
    settings = settings or TileSettings()
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise UNetLabError(f"expected an image of shape (H, W, C), got shape {image.shape}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    height, width = image.shape[:2]
    summed = np.zeros((outputs, height, width), np.float32)
    tiles = list(iter_tiles(height, width, settings))
    tile_h, tile_w = tiles[0][2], tiles[0][3]
    overlap = settings.overlap if len(tiles) > 1 else 0
    ramp_h, ramp_w = blending_ramp(tile_h, overlap), blending_ramp(tile_w, overlap)
    window = np.outer(ramp_h, ramp_w)

    for first in range(0, len(tiles), settings.batch_size):
        batch_tiles = tiles[first:first + settings.batch_size]
        batch = np.stack([tile_as_float(image[top:top + h, left:left + w], channels, source)
                          for top, left, h, w in batch_tiles])
        inputs = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), np.float32)).to(device)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        probabilities = _forward(model, inputs, device, precision, settings.flip_tta)
        for (top, left, h, w), tile_probability in zip(batch_tiles, probabilities):
            summed[:, top:top + h, left:left + w] += tile_probability[:outputs] * window
    rows, columns = np.zeros(height, np.float32), np.zeros(width, np.float32)
    for top in tile_starts(height, tile_h, settings.overlap):
        rows[top:top + tile_h] += ramp_h
    for left in tile_starts(width, tile_w, settings.overlap):
        columns[left:left + tile_w] += ramp_w
    summed /= rows[None, :, None]
    summed /= columns[None, None, :]
    # Two float32 divisions can round a certain pixel to 1 + 1 ulp: probabilities stay in [0, 1].
    np.clip(summed, 0.0, 1.0, out=summed)
    return summed[0] if outputs == 1 else summed


def _forward(model, inputs: torch.Tensor, device: torch.device, precision: str, flip_tta: bool) -> np.ndarray:
    """Sigmoid probabilities (N, K, h, w) as float32 numpy, averaged over flips if asked."""
    flips = [(), (3,), (2,), (2, 3)] if flip_tta else [()]
    total = None
    for dims in flips:
        flipped = torch.flip(inputs, dims) if dims else inputs
        with autocast_context(device, precision):
            logits = model(flipped)
        probability = torch.sigmoid(logits.float())
        probability = torch.flip(probability, dims) if dims else probability
        total = probability if total is None else total + probability
    return (total / len(flips)).cpu().numpy()
