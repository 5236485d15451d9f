"""Milliseconds per 256x256 sample of each augmentation level (``python -m benchmarks.bench_augment``).

The training loop augments every patch on the CPU; this shows the cost per sample next to
a training step, so one can see the loop is not data-bound.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from core.augment import LEVELS, augment, build_augmentation


def time_level(level: str, channels: int, size: int = 256, repeats: int = 200) -> float:
    """Mean milliseconds of one ``augment`` call on a ``size`` x ``size`` image with mask and instances."""
    rng = np.random.default_rng(0)
    image = rng.random((size, size, channels), dtype=np.float32)
    mask = ndimage.gaussian_filter(rng.standard_normal((size, size)), 4) > 0.3
    instances = ndimage.label(mask)[0]
    transform = build_augmentation(level, size, seed=0)
    for _ in range(10):  # warm-up: OpenCV and albumentations set-up costs
        augment(transform, image, mask, instances)
    start = time.perf_counter()
    for _ in range(repeats):
        augment(transform, image, mask, instances)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    print(f"{'level':<8} {'1 channel ms':>13} {'3 channels ms':>14}")
    for level in LEVELS:
        print(f"{level:<8} {time_level(level, 1):>13.2f} {time_level(level, 3):>14.2f}")


if __name__ == "__main__":
    main()
