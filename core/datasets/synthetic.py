"""Built-in synthetic datasets: no files needed, generated deterministically from seed 0.

Each set has 24 grey 256x256 images with masks and instance labels:

- ``synthetic-nuclei``: bright elliptical nuclei, isolated and in touching clusters, of varying
  size and stain, on an uneven background with blur and noise. Positive class: nucleus.
- ``synthetic-membranes``: Voronoi-like cells with wavy, thin dark boundaries, textured
  interiors with small dark organelles, blur and noise. Positive class: cell interior (as ISBI 2012).
- ``synthetic-mitochondria``: elongated dark organelles with a textured inside, in a textured
  field that also holds faint membranes and small dark vesicles (distractors). Positive class:
  mitochondrion.

The seed is fixed (``SYNTHETIC_SEED``) so everyone gets the same default data; images are
stored as uint8 like a real acquisition.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from core.datasets.base import DatasetSpec, RawData, Source, SourcePlan
from core.datasets.io import compact_labels

SYNTHETIC_SEED = 0
N_IMAGES = 24
IMAGE_SHAPE = (256, 256)

_LAYOUT = "built in: generated in memory, no files (root is ignored)."


def _spec(name: str, title: str, description: str, positive_class: str, kind: str) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        title=title,
        description=description,
        positive_class=positive_class,
        kind=kind,
        splits=("train",),
        labelled_splits=("train",),
        needs_root=False,
        layout=_LAYOUT,
        paper_size=None,
        ordering="independent",
    )


NUCLEI = _spec(
    "synthetic-nuclei",
    "Synthetic nuclei (built in)",
    f"{N_IMAGES} grey {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} images of bright nuclei, isolated and touching, "
    "with uneven background and noise.",
    "nucleus",
    "objects",
)
MEMBRANES = _spec(
    "synthetic-membranes",
    "Synthetic membranes (built in)",
    f"{N_IMAGES} grey {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} images of Voronoi-like cells with thin dark "
    "boundaries, textured interiors and blur, like a small ISBI 2012.",
    "cell interior",
    "membrane",
)
MITOCHONDRIA = _spec(
    "synthetic-mitochondria",
    "Synthetic mitochondria (built in)",
    f"{N_IMAGES} grey {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} images of elongated dark organelles in a "
    "textured field with membrane and vesicle distractors.",
    "mitochondrion",
    "objects",
)


# ---- drawing helpers ---------------------------------------------------------------------


def paint_ellipses(
    shape: tuple[int, int],
    centres: np.ndarray,
    semi_axes: np.ndarray,
    angles: np.ndarray,
    labels: np.ndarray | None = None,
    first_label: int = 1,
) -> np.ndarray:
    """Paint filled ellipses into an int32 label image, later ellipses over earlier ones.

    Parameters
    ----------
    shape : (H, W)
    centres : (K, 2) float, (row, col)
    semi_axes : (K, 2) float, (along the angle, across it), in pixels
    angles : (K,) float, radians, measured from the column axis
    labels : (H, W) int32, painted in place if given
    first_label : the id of the first ellipse; the k-th gets ``first_label + k``

    Returns
    -------
    ndarray, int32, shape (H, W)
    """
    labels = np.zeros(shape, np.int32) if labels is None else labels
    height, width = shape
    for k, ((row, col), (along, across), angle) in enumerate(zip(centres, semi_axes, angles)):
        reach = int(np.ceil(max(along, across))) + 1
        top, bottom = max(int(row) - reach, 0), min(int(row) + reach + 1, height)
        left, right = max(int(col) - reach, 0), min(int(col) + reach + 1, width)
        if top >= bottom or left >= right:
            continue
        rows, cols = np.ogrid[top:bottom, left:right]
        dy, dx = rows - row, cols - col
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = (u / along) ** 2 + (v / across) ** 2 <= 1.0
        labels[top:bottom, left:right][inside] = first_label + k
    return labels


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def voronoi_labels(rng: np.random.Generator, shape: tuple[int, int], n_cells: int, wobble: float) -> np.ndarray:
    """Voronoi cells (ids 1..n) of random seeds, with boundaries bent by a smooth random warp."""
    seeds = np.zeros(shape, np.int32)
    rows = rng.integers(0, shape[0], n_cells)
    cols = rng.integers(0, shape[1], n_cells)
    seeds[rows, cols] = np.arange(1, n_cells + 1)
    _, (nearest_row, nearest_col) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[nearest_row, nearest_col]
    grid_rows, grid_cols = np.indices(shape)
    warped_rows = np.clip(np.rint(grid_rows + wobble * smooth_noise(rng, shape, 10)), 0, shape[0] - 1).astype(int)
    warped_cols = np.clip(np.rint(grid_cols + wobble * smooth_noise(rng, shape, 10)), 0, shape[1] - 1).astype(int)
    return cells[warped_rows, warped_cols]


def _finish(image: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    """Optical blur, then sensor noise, then clipping to [0, 1]."""
    image = ndimage.gaussian_filter(image, blur)
    image = image + noise * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0)


# ---- the three generators: rng -> (image float in [0, 1], instances int32) ---------------


def nuclei_image(rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Bright nuclei (isolated and touching clusters) on an uneven dark background."""
    n_isolated = int(rng.integers(15, 30))
    n_clusters = int(rng.integers(3, 6))
    centres = [rng.uniform(8, np.array(shape) - 8, size=(n_isolated, 2))]
    for _ in range(n_clusters):
        anchor = rng.uniform(20, np.array(shape) - 20)
        size = int(rng.integers(2, 5))
        # Neighbours about one nucleus diameter apart, so they touch or overlap slightly.
        steps = rng.normal(0, 1, size=(size, 2))
        steps = steps / np.linalg.norm(steps, axis=1, keepdims=True) * rng.uniform(10, 16, size=(size, 1))
        centres.append(anchor + np.cumsum(steps, axis=0))
    centres = np.concatenate(centres)
    n = len(centres)
    major = rng.uniform(5, 13, n)
    semi_axes = np.stack([major, major * rng.uniform(0.6, 1.0, n)], axis=1)
    instances = paint_ellipses(shape, centres, semi_axes, rng.uniform(0, np.pi, n))

    rows, cols = np.indices(shape) / np.array(shape).reshape(2, 1, 1)
    direction = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(direction) * cols + np.sin(direction) * rows
    background = rng.uniform(0.05, 0.2) + rng.uniform(0.0, 0.15) * gradient + 0.04 * smooth_noise(rng, shape, 30)

    stain = np.concatenate([[0.0], rng.uniform(0.22, 0.7, n)])  # per nucleus; index 0 = background
    texture = 1.0 + 0.15 * smooth_noise(rng, shape, 1.5)
    image = background + stain[instances] * texture
    return _finish(image, rng, blur=1.0, noise=rng.uniform(0.02, 0.05)), instances


def membranes_image(rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi-like cells (interior = positive) separated by thin dark wavy membranes."""
    from skimage.measure import label as connected_components
    from skimage.segmentation import find_boundaries

    cells = voronoi_labels(rng, shape, n_cells=int(rng.integers(50, 90)), wobble=4.0)
    membrane = find_boundaries(cells, connectivity=1, mode="thick")
    interior = ~membrane

    n = int(cells.max()) + 1
    brightness = rng.uniform(0.5, 0.8, n)[cells]
    image = brightness + 0.07 * smooth_noise(rng, shape, 1.0) + 0.05 * smooth_noise(rng, shape, 4.0)
    # Small dark organelles inside cells: dark like membranes, but round and part of the interior.
    k = int(rng.integers(8, 20))
    organelles = paint_ellipses(
        shape, rng.uniform(0, shape, size=(k, 2)), rng.uniform(2.0, 4.5, size=(k, 2)), rng.uniform(0, np.pi, k)
    )
    image = np.where(organelles > 0, image - rng.uniform(0.15, 0.3), image)
    image = np.where(membrane, rng.uniform(0.1, 0.25) + 0.05 * smooth_noise(rng, shape, 2.0), image)
    instances = connected_components(interior, connectivity=1).astype(np.int32)
    return _finish(image, rng, blur=0.8, noise=rng.uniform(0.02, 0.05)), instances


def mitochondria_image(rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Elongated dark mitochondria in a textured field with faint membranes and vesicles."""
    from skimage.segmentation import find_boundaries

    n = int(rng.integers(6, 14))
    length = rng.uniform(10, 26, n)
    semi_axes = np.stack([length, rng.uniform(4, 8, n)], axis=1)
    instances = paint_ellipses(shape, rng.uniform(12, np.array(shape) - 12, size=(n, 2)), semi_axes,
                               rng.uniform(0, np.pi, n))

    field = rng.uniform(0.5, 0.65) + 0.06 * smooth_noise(rng, shape, 1.2) + 0.05 * smooth_noise(rng, shape, 8)
    # Distractors: faint cell membranes and small round vesicles, both dark but not mitochondria.
    membranes = find_boundaries(voronoi_labels(rng, shape, int(rng.integers(4, 9)), wobble=6.0), mode="inner")
    field = np.where(membranes, field - 0.18, field)
    k = int(rng.integers(10, 25))
    radius = rng.uniform(1.5, 3.0, k)
    vesicles = paint_ellipses(shape, rng.uniform(0, shape, size=(k, 2)), np.stack([radius, radius], 1), np.zeros(k))
    field = np.where(vesicles > 0, field - 0.2, field)

    inside = instances > 0
    darkness = np.concatenate([[0.0], rng.uniform(0.22, 0.35, n)])[instances]
    cristae = 0.08 * smooth_noise(rng, shape, 0.8)
    # A darker rim: the outer membrane of the organelle.
    rim = inside & ~ndimage.binary_erosion(inside, iterations=2)
    image = np.where(inside, field - darkness + cristae - 0.06 * rim, field)
    return _finish(image, rng, blur=1.0, noise=rng.uniform(0.02, 0.04)), instances


GENERATORS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    NUCLEI.name: nuclei_image,
    MEMBRANES.name: membranes_image,
    MITOCHONDRIA.name: mitochondria_image,
}


def stable_seed(name: str, seed: int) -> np.random.SeedSequence:
    """A seed sequence from a name and an integer that is the same on every run and machine."""
    digest = hashlib.sha256(name.encode()).digest()
    return np.random.SeedSequence([int.from_bytes(digest[:8], "little"), seed])


def generate(name: str, n_images: int = N_IMAGES, seed: int = SYNTHETIC_SEED) -> RawData:
    """Generate a synthetic set: uint8 (H, W, 1) images, bool masks, uint16 instance ids."""
    generator = GENERATORS[name]
    children = stable_seed(name, seed).spawn(n_images)
    images, masks, instances = [], [], []
    for child in children:
        image, labels = generator(np.random.default_rng(child))
        images.append(np.rint(image * 255).astype(np.uint8)[:, :, None])
        masks.append(labels > 0)
        instances.append(compact_labels(labels))
    width = len(str(n_images - 1))
    names = [f"{name}[{index:0{width}d}]" for index in range(n_images)]
    checks = [f"generated from seed {seed}: {n_images} images of {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}"]
    return RawData(images=images, masks=masks, instances=instances, names=names, checks=checks)


def _source(spec: DatasetSpec) -> Source:
    def plan(root: Path | None, split: str) -> SourcePlan:
        return SourcePlan(files=[], items=spec.name)

    def read(plan: SourcePlan) -> RawData:
        return generate(plan.items)

    return Source(spec, plan, read)


SOURCES = [_source(NUCLEI), _source(MEMBRANES), _source(MITOCHONDRIA)]
