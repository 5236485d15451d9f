"""Saving and loading model checkpoints safely.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only::

    {"format": "unetlab-checkpoint", "version": 1, "state_dict": {...}, "config": {...},
     "epoch": int, "metrics": {...}, "optimizer": {...}, "scheduler": {...}}

It is loaded with ``torch.load(weights_only=True)``, which refuses any pickled object
that is not a tensor or a plain container, so a crafted file cannot run code. It is
written to a temporary file and renamed, so a crash mid-write never leaves a torn file.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from core.config import RunConfig
from core.errors import CheckpointError
from core.fileio import atomic_path

FORMAT = "unetlab-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tags) atomically to ``path``.

    Raises
    ------
    DiskFullError
        When the disk is full: the temporary file is removed and ``path`` keeps its old
        content (e.g. the previous epoch's ``last.pt``).
    """
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, temporary)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        If the file is missing, is not a torch checkpoint, holds objects other than tensors
        and plain containers (refused unread: unpickling them could run code), or lacks the
        keys U-Net Lab writes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as handle:
        head = handle.read(4)
    # torch.save writes a zip archive (or, before PyTorch 1.6, a bare pickle starting 0x80).
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with warnings.catch_warnings():
            # torch warns that protocol-4 pickles may hold instructions it does not support; the
            # weights_only loader refuses them anyway, with the error reported below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain "
            f"values, and unpickling them could run code ({str(error).splitlines()[0][:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {str(error)[:200]}") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a U-Net Lab checkpoint (expected a dict with "
            "'state_dict' and 'config')"
        )
    return payload


def checkpoint_config(payload: dict[str, Any], path: str | Path) -> tuple[RunConfig, int]:
    """The run settings and input channels stored in a checkpoint, checked before any model is built.

    Raises
    ------
    CheckpointError
        When the stored config is not a dict of valid settings, the input channels are not a
        small positive integer, or the network would be larger than the model allows.
    """
    from core.errors import UNetLabError
    from core.model import check_model_size

    stored, in_channels = payload.get("config"), payload.get("in_channels", 1)
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: the stored run settings are a {type(stored).__name__}, not a dict of "
                              "settings; this is not a checkpoint U-Net Lab wrote")
    try:
        config = RunConfig.from_dict(stored).validate()
        check_model_size(int(in_channels), config.base_width, config.depth)
    except (UNetLabError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: the stored run settings are not usable: {error}") from None
    return config, int(in_channels)


def check_weights_fit(model: torch.nn.Module, state_dict: Any, path: str | Path) -> None:
    """Compare every tensor's name and shape with the model's before loading.

    Raises
    ------
    CheckpointError
        Naming the first missing, unexpected or differently shaped tensor.
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: the stored weights are a {type(state_dict).__name__}, not a state dict")
    expected = model.state_dict()
    missing = [name for name in expected if name not in state_dict]
    unexpected = [name for name in state_dict if name not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the weights do not fit this U-Net: "
                              + (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
                              + f" ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    for name, tensor in expected.items():
        stored = state_dict[name]
        if not isinstance(stored, torch.Tensor) or tuple(stored.shape) != tuple(tensor.shape):
            shape = tuple(stored.shape) if isinstance(stored, torch.Tensor) else type(stored).__name__
            raise CheckpointError(f"{path}: weight {name} has shape {shape}, the model expects "
                                  f"{tuple(tensor.shape)}: it was trained with another width, depth or "
                                  "number of channels")


def build_model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the U-Net stored in a checkpoint, in eval mode.

    The stored settings are validated and the network's size bounded before it is built,
    and every weight's shape is compared before loading, so a damaged or crafted file gives
    a clear :class:`CheckpointError`, never a huge allocation or a raw ``RuntimeError``.

    Returns
    -------
    model : core.model.UNet
    config : RunConfig
        The run settings stored with the weights.
    payload : dict
        The whole checkpoint (epoch, metrics, ...).
    """
    from core.model import UNet

    payload = load_checkpoint(path)
    config, in_channels = checkpoint_config(payload, path)
    model = UNet(in_channels=in_channels, base_width=config.base_width, depth=config.depth,
                 out_channels=config.output_channels)
    check_weights_fit(model, payload["state_dict"], path)
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, config, payload
