"""Nested train/validation splits of a dataset's labelled "train" pool.

One fixed permutation per (dataset name, seed, number of images): validation is its last
``validation_fraction`` share (at least one image), the same for every training fraction, so
runs compare on the same images; training is its first ``ceil(train_fraction * n)`` images, so
a 10% run's training images are a subset of a 20% run's. Official test splits (ISBI test
volume, EPFL testing stack, NCMIR validation/) are other Datasets and never enter here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.errors import DatasetError

if TYPE_CHECKING:
    from core.datasets.base import Dataset

# Fractions such as 0.8 * 30 = 24.000000000000004 must not round up to 25.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Split:
    """Indices into a dataset's "train" split; ``train`` and ``validation`` are disjoint."""

    train: list[int]
    validation: list[int]
    seed: int
    train_fraction: float
    validation_fraction: float


def permutation(name: str, seed: int, n: int) -> np.ndarray:
    """The fixed order of ``n`` items for (name, seed), identical on every run and machine.

    Seeded from SHA-256 of the name, never Python's per-process randomised ``hash``.
    """
    digest = hashlib.sha256(name.encode()).digest()
    rng = np.random.default_rng(np.random.SeedSequence([int.from_bytes(digest[:8], "little"), int(seed)]))
    return rng.permutation(n)


def split(
    dataset: Dataset | str,
    train_fraction: float,
    seed: int = 0,
    validation_fraction: float = 0.2,
    n: int | None = None,
) -> Split:
    """Split the labelled pool into training and validation indices.

    Parameters
    ----------
    dataset : Dataset or str
        A loaded "train" split, or a dataset name together with ``n``.
    train_fraction : float
        Share of the pool used for training, in (0, 1 - validation_fraction].
    seed : int
        Chooses the permutation.
    validation_fraction : float
        Share kept for validation, in (0, 1); at least one image.
    n : int, optional
        Number of images; required when ``dataset`` is a name.

    Returns
    -------
    Split
        ``validation``: the last ``max(1, ceil(validation_fraction * n))`` items of the
        permutation; ``train``: its first ``ceil(train_fraction * n)`` items, capped at what
        validation leaves. Both lists sorted.

    Raises
    ------
    DatasetError
        Bad fractions, a non-"train" split, or too few images for both parts.
    """
    if isinstance(dataset, str):
        name = dataset
        if n is None:
            raise DatasetError("split() of a dataset name needs n, the number of images")
    else:
        name = dataset.spec.name
        if dataset.split_name != "train":
            raise DatasetError(
                f"split() divides the labelled 'train' pool; {name}/{dataset.split_name} is an official "
                "held-out split and is never trained on"
            )
        if n is not None and n != len(dataset):
            raise DatasetError(f"n={n} but {name} has {len(dataset)} images")
        n = len(dataset)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DatasetError(f"n must be a non-negative integer, got {n!r}")
    if not 0.0 < validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    largest = 1.0 - validation_fraction
    if not 0.0 < train_fraction <= largest + _EPSILON:
        raise DatasetError(
            f"train_fraction must be in (0, {largest:g}] (1 - validation_fraction), got {train_fraction!r}"
        )
    n_validation = max(1, math.ceil(validation_fraction * n - _EPSILON))
    # At the largest train fraction, rounding both parts up could overlap (n=24, 0.8 + 0.2 gives
    # 20 + 5): training takes what validation leaves. Capping keeps the nesting.
    n_train = min(math.ceil(train_fraction * n - _EPSILON), n - n_validation)
    if n_train < 1:
        raise DatasetError(
            f"{name} has {n} labelled images: too few for {n_train} training and {n_validation} validation "
            f"images (train_fraction {train_fraction:g}, validation_fraction {validation_fraction:g})"
        )
    order = permutation(name, seed, n)
    return Split(
        train=sorted(int(i) for i in order[:n_train]),
        validation=sorted(int(i) for i in order[n - n_validation:]),
        seed=int(seed),
        train_fraction=float(train_fraction),
        validation_fraction=float(validation_fraction),
    )
