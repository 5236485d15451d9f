"""Small builders shared by several test modules (imported as ``helpers``; pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.metrics import PixelCurveAccumulator
from core.paths import PROJECT_ROOT

#: A CLI training run that finishes in seconds: 2 steps of 2 64x64 patches, width 8, depth 3, one thread.
TINY_TRAIN_ARGS = ("--dataset", "synthetic-nuclei", "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size",
                   "64", "--depth", "3", "--width", "8", "--threads", "1", "--quiet")


def tiny_cli_run(base: Path, *options: str, epochs: int = 1) -> dict[str, str]:
    """Train a tiny run through the CLI in a registry under ``base``; returns the environment naming it.

    ``options`` are further ``train`` options (e.g. ``--target mask+contour``). Call it again with the
    returned registry's ``base`` for a second run in the same registry.
    """
    env = {"UNETLAB_CACHE": str(base / "cache"), "UNETLAB_CHECKPOINTS": str(base / "checkpoints")}
    subprocess.run([sys.executable, "-m", "core", "train", *TINY_TRAIN_ARGS, "--epochs", str(epochs), *options],
                   cwd=PROJECT_ROOT, env={**os.environ, **env}, check=True, capture_output=True)
    return env


def curves_of(probabilities: np.ndarray, truth: np.ndarray):
    """The PixelCurves of one probability map against its truth."""
    accumulator = PixelCurveAccumulator()
    accumulator.update(probabilities, truth)
    return accumulator.result()


def grid_table() -> pd.DataFrame:
    """A tiny study table: cells of 2, 1, 3 and 0 evaluated runs over two fractions and three levels."""
    rows = [("light", 0.1, 0.5), ("light", 0.1, 0.7), ("none", 0.1, 0.4), ("none", 0.5, 0.8),
            ("none", 0.5, 0.6), ("none", 0.5, 1.0), ("heavy", 0.5, np.nan)]
    return pd.DataFrame(rows, columns=["Augmentation", "Train fraction", "F1"])
