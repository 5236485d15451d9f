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
from core.predict import TileSettings, iter_tiles, predict_probabilities

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


def describe_device(device: torch.device) -> str:
    """The device as the registry records where a run trained: ``cpu``, or ``cuda (GPU name)``."""
    if device.type == "cuda":
        try:
            return f"cuda ({torch.cuda.get_device_name(device)})"
        except (RuntimeError, AssertionError):
            return "cuda"
    return device.type


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


#: How :func:`predict_image` scales an image: to the run's training size, or not at all.
SCALES = ("training", "native")


@dataclass
class Prediction:
    """A probability map of the positive class at the image's own size, and how it was made.

    ``scale`` says which size the network saw: ``"native"`` or, for a run trained on resized
    images, ``"training"``, with ``network_shape`` the (height, width) it was resized to.
    """

    probability: np.ndarray  # float32 (H, W) in [0, 1], H and W of the input image
    seconds: float
    tiles: int
    scale: str = "native"
    network_shape: tuple[int, int] = (0, 0)
    #: float32 (H, W) probability of an object's outline, from a model trained with target
    #: "mask+contour" (what the ``seeded-watershed`` post-processing needs); None otherwise.
    contour: np.ndarray | None = None

    def scale_note(self) -> str:
        """One sentence for the user: at which size the image was segmented."""
        height, width = self.probability.shape
        if (height, width) == self.network_shape:
            return f"segmented at its own size, {width} x {height} pixels"
        net_h, net_w = self.network_shape
        return (f"resized from {width} x {height} to {net_w} x {net_h} pixels (the size the model was trained at), "
                "segmented, and the result resized back")


def network_shape(config: RunConfig, shape: tuple[int, int], scale: str = "training") -> tuple[int, int]:
    """The (height, width) an image of ``shape`` is given to the network at.

    ``scale="training"`` applies the run's ``image_size`` (every training image was resized to
    image_size x image_size, so the model learnt objects at that scale); ``"native"`` keeps it.

    Raises
    ------
    RunError
        An unknown ``scale``.
    """
    if scale not in SCALES:
        raise RunError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "training" and config.image_size:
        return (int(config.image_size), int(config.image_size))
    return (int(shape[0]), int(shape[1]))


def predict_image(loaded: LoadedModel, image: np.ndarray, tile_size: int | None = None,
                  overlap: int | None = None, flip_tta: bool = False,
                  source: str = "the image", scale: str = "training") -> Prediction:
    """Tiled prediction of one image with a loaded model, returned at the image's own size.

    Parameters
    ----------
    loaded : LoadedModel
    image : ndarray, shape (H, W, C) or (H, W)
        float32 in [0, 1], or uint8 / uint16 (scaled tile by tile: a large upload is never
        held as float32 whole). Grey images go to colour models by repetition and colour to
        grey by the mean.
    tile_size, overlap : int, optional
        Override the run's tile settings (see :func:`tile_settings`).
    flip_tta : bool
        Average over the four flips (4x slower).
    source : str
        How error messages name the image.
    scale : {"training", "native"}
        ``"training"`` (default) resizes the image to the run's ``image_size`` when it was
        trained on resized images (bilinear, anti-aliased, as the loaders resize) and the
        probabilities back (bilinear); ``"native"`` predicts at the image's own size.

    Returns
    -------
    Prediction
        ``probability`` float32 (H, W) of the input image.
    """
    from core.datasets.registry import resize_image
    from core.preprocess import is_identity, preprocess

    config = loaded.config
    settings = tile_settings(config, tile_size, overlap, flip_tta)
    if image.ndim == 2:
        image = image[:, :, None]
    native = image.shape[:2]
    target = network_shape(config, native, scale)
    started = time.perf_counter()
    if target != native:
        image = resize_image(image, target)
    if not is_identity(config.normalization, config.colour):  # as the run's training images were
        image = preprocess(image, config.normalization, config.colour)
    outputs = predict_probabilities(loaded.model, image, settings, loaded.device, loaded.precision,
                                    channels_last=loaded.channels_last, channels=loaded.channels,
                                    source=source, outputs=config.output_channels)
    maps = outputs[None] if outputs.ndim == 2 else outputs
    if target != native:
        maps = np.stack([np.clip(_resize(m, native, order=1, anti_aliasing=False), 0, 1).astype(np.float32)
                         for m in maps])
    return Prediction(probability=maps[0], seconds=time.perf_counter() - started,
                      tiles=sum(1 for _ in iter_tiles(target[0], target[1], settings)),
                      scale="training" if target != native else "native", network_shape=target,
                      contour=maps[1] if len(maps) > 1 else None)


def _resize(array: np.ndarray, shape: tuple[int, int], order: int, anti_aliasing: bool) -> np.ndarray:
    from skimage.transform import resize

    return resize(array, tuple(shape) + array.shape[2:], order=order, anti_aliasing=anti_aliasing,
                  preserve_range=True).astype(np.float32)
