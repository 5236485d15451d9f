"""Running a trained model: the one path from weights to a probability map.

Training's validation, ``evaluate``, ``predict``, the Masks and Segment pages all go
through this module, so one checkpoint scores the same everywhere. It owns:

- the device choice (``auto``: CUDA, then Apple MPS, then the CPU) and the precision
  choice (``auto``: bf16 on CUDA with bf16 and on CPUs with native bf16, fp16 on other
  GPUs, else fp32);
- the memory format and tile settings derived from a run's config;
- :class:`LoadedModel` (a model with its config, channels, device and precision) and
  :func:`predict_image`, which predicts one image tile by tile.

The tiling itself (tiles, overlap, blending window) is in :mod:`core.predict`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import RunConfig
from core.errors import RunError
from core.predict import TileSettings, iter_tiles, match_channels, predict_probabilities

#: Largest overlap of neighbouring tiles, in pixels; smaller tiles overlap by a quarter.
MAX_TILE_OVERLAP = 64


# ---- devices and precision ------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX, where bf16 convolutions are fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into fp32, bf16 or fp16 for this device.

    On CPUs with native bf16, bf16 autocast trains about twice as fast as fp32
    (benchmarks/train_speed.py); elsewhere on the CPU it is slower, so fp32 is kept.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def uses_channels_last(config: RunConfig, device: torch.device) -> bool:
    """Whether the model runs in channels_last memory format (not supported on MPS)."""
    return bool(config.channels_last) and device.type != "mps"


def memory_format(config: RunConfig, device: torch.device) -> torch.memory_format:
    """The memory format of the model's weights and inputs for this config and device."""
    return torch.channels_last if uses_channels_last(config, device) else torch.contiguous_format


def tile_settings(config: RunConfig, tile_size: int | None = None, overlap: int | None = None,
                  flip_tta: bool = False) -> TileSettings:
    """Tile settings for a run: its ``tile_size`` unless given, overlap a quarter tile (at most 64)."""
    tile = int(tile_size or config.tile_size)
    return TileSettings(tile_size=tile, overlap=min(MAX_TILE_OVERLAP, tile // 4) if overlap is None else int(overlap),
                        flip_tta=flip_tta)


# ---- a model ready to predict ------------------------------------------------------------


@dataclass
class LoadedModel:
    """A run's model with everything needed to predict with it.

    model : the U-Net (any ``torch.nn.Module`` mapping (N, C, h, w) to (N, 1, h, w) logits)
    config : the run's settings (tile size, threshold, channels_last, ...)
    channels : input channels the model expects (1 grey, 3 colour)
    epoch : the training epoch the weights are from (0 for untrained)
    device, precision : where and how it runs (precision resolved: fp32, bf16 or fp16)
    """

    model: torch.nn.Module
    config: RunConfig
    channels: int
    epoch: int
    device: torch.device
    precision: str

    @property
    def channels_last(self) -> bool:
        return uses_channels_last(self.config, self.device)


def load_model(checkpoint: str | Path, device: str = "auto") -> LoadedModel:
    """Rebuild a run's model from a checkpoint, in eval mode, on ``device``.

    Raises
    ------
    CheckpointError
        When the file is missing, unsafe or not a U-Net Lab checkpoint.
    """
    from core.checkpoints import build_model_from_checkpoint

    resolved = resolve_device(device)
    model, config, payload = build_model_from_checkpoint(checkpoint, resolved)
    model = model.to(memory_format=memory_format(config, resolved))
    return LoadedModel(model=model, config=config, channels=int(payload.get("in_channels", 1)),
                       epoch=int(payload.get("epoch", 0)), device=resolved,
                       precision=resolve_precision(config.precision, resolved))


@dataclass
class Prediction:
    """A probability map of the positive class, and what it took."""

    probability: np.ndarray  # float32 (H, W) in [0, 1]
    seconds: float
    tiles: int


def predict_image(loaded: LoadedModel, image: np.ndarray, tile_size: int | None = None,
                  overlap: int | None = None, flip_tta: bool = False,
                  source: str = "the image") -> Prediction:
    """Tiled prediction of one image with a loaded model.

    Parameters
    ----------
    loaded : LoadedModel
    image : ndarray, float32, shape (H, W, C) or (H, W), values in [0, 1]
        Grey images go to colour models by repetition and colour to grey by the mean.
    tile_size, overlap : int, optional
        Override the run's tile settings (see :func:`tile_settings`).
    flip_tta : bool
        Average over the four flips (4x slower).
    source : str
        How error messages name the image.

    Returns
    -------
    Prediction
    """
    settings = tile_settings(loaded.config, tile_size, overlap, flip_tta)
    image = match_channels(image, loaded.channels, source=source)
    started = time.perf_counter()
    probability = predict_probabilities(loaded.model, image, settings, loaded.device, loaded.precision,
                                        channels_last=loaded.channels_last)
    return Prediction(probability=probability, seconds=time.perf_counter() - started,
                      tiles=sum(1 for _ in iter_tiles(image.shape[0], image.shape[1], settings)))
