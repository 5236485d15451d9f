"""Small builders shared by several test modules (imported as ``helpers``; pytest puts tests/ on the path)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.metrics import PixelCurveAccumulator


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
