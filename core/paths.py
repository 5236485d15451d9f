"""Where U-Net Lab keeps what it generates.

Both folders can be moved with environment variables, which the tests use to keep
every run in a temporary folder:

- ``UNETLAB_CACHE``: the run registry and cached arrays (default ``<project>/cache``);
- ``UNETLAB_CHECKPOINTS``: model weights (default ``<project>/checkpoints``).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Folder for the registry and cached arrays, created on first use."""
    path = Path(os.environ.get("UNETLAB_CACHE", PROJECT_ROOT / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir() -> Path:
    """Folder holding one sub-folder of weights per run, created on first use."""
    path = Path(os.environ.get("UNETLAB_CHECKPOINTS", PROJECT_ROOT / "checkpoints"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path | None:
    """The real data samples beside the project (``../shared/data``), or None if absent."""
    path = Path(os.environ.get("UNETLAB_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
    return path if path.is_dir() else None
