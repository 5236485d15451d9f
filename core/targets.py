"""What the network learns from a labelled patch: its target channels and pixel weights.

Every loader gives a foreground mask and (for object datasets) instance labels; from them:

- :func:`contour_map`: each object's outline, one pixel wide on its inside, so two touching
  objects are parted by a two-pixel line. A network that predicts it beside the mask lets the
  ``seeded-watershed`` post-processing (core.postprocess) split touching objects at their
  real border rather than at a guess from the mask's shape;
- :func:`target_channels`: the stacked float target of a run's ``target`` setting;
- :func:`border_weight_map`: the weight map of the original U-Net (Ronneberger et al. 2015,
  eq. 2), which makes the thin background gaps between touching objects expensive to miss.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.segmentation import find_boundaries

from core.config import TARGETS


def instances_or_components(mask: np.ndarray, instances: np.ndarray | None, connectivity: int = 2) -> np.ndarray:
    """The instance labels, or the mask's connected components where a source has none.

    Parameters
    ----------
    mask : ndarray, bool, shape (H, W)
    instances : ndarray, integer, shape (H, W), or None
    connectivity : 1 (4-connected) or 2 (8-connected), for the components

    Returns
    -------
    ndarray, int32, shape (H, W); 0 = background
    """
    if instances is not None:
        return np.asarray(instances, dtype=np.int32)
    return label(mask, connectivity=connectivity).astype(np.int32)


def contour_map(instances: np.ndarray) -> np.ndarray:
    """Each object's inner outline.

    Parameters
    ----------
    instances : ndarray, integer, shape (H, W); 0 = background

    Returns
    -------
    ndarray, bool, shape (H, W): True on object pixels that touch the background or another
    object (4- or 8-neighbours), False elsewhere. An object one or two pixels wide is all outline.

    Examples
    --------
    >>> labels = np.zeros((5, 8), np.int32); labels[1:4, 1:4] = 1; labels[1:4, 4:7] = 2
    >>> contour_map(labels).astype(int)[2]
    array([0, 1, 0, 1, 1, 0, 1, 0])
    """
    instances = np.asarray(instances)
    return find_boundaries(instances, connectivity=1, mode="inner") & (instances > 0)


def target_channels(mask: np.ndarray, instances: np.ndarray | None, target: str) -> np.ndarray:
    """The training target of one image or patch.

    Parameters
    ----------
    mask : ndarray, bool, shape (H, W), the foreground
    instances : ndarray, integer, shape (H, W), or None (then the mask's 8-connected components)
    target : one of :data:`core.config.TARGETS`

    Returns
    -------
    ndarray, float32, shape (K, H, W) with values 0 or 1: K = 1 (the mask) for ``"mask"``,
    K = 2 (mask, contour) for ``"mask+contour"``.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
    mask = np.asarray(mask, dtype=bool)
    if target == "mask":
        return mask[None].astype(np.float32)
    contours = contour_map(instances_or_components(mask, instances)) & mask
    return np.stack([mask, contours]).astype(np.float32)


def border_weight_map(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                      touching: float = 0.0) -> np.ndarray:
    """Ronneberger et al. (2015) eq. 2 without its class-balance term: ``1 + w0 * exp(-(d1 + d2)**2 /
    (2 sigma**2))`` on background pixels, and (with ``touching``) ``1 + touching * exp(-d**2 / (2
    sigma**2))`` on object pixels, ``d`` the distance to the nearest other object.

    ``d1`` and ``d2`` are a pixel's distances to the nearest and the second-nearest object, so
    the weight peaks (``1 + w0``) in a narrow gap between two objects and stays about 1 next to
    a lone object, whose ``d2`` is large. (The paper's class-balance term ``w_c`` is left out:
    class imbalance is the loss's business here, e.g. ``bce+dice``.)

    The paper's cells were always parted by background. Nuclei in DSB 2018 often touch with no
    background between them: their border is a line of object pixels, which the gap term never
    weighs. ``touching`` weighs those pixels (and, falling off with ``sigma``, their
    neighbours inside the object) so a network learns the line where two objects meet, the
    line a ``mask+contour`` model's outline channel must find to part them. Object pixels of
    a lone object stay at about 1.

    Parameters
    ----------
    instances : ndarray, integer, shape (H, W); 0 = background
    w0 : float, the weight added at a zero-width gap (the paper: 10)
    sigma : float, pixels; the paper: about 5
    touching : float, the weight added on an object pixel next to another object (0: objects
        weigh 1, as in the paper)

    Returns
    -------
    ndarray, float32, shape (H, W), values in [1, 1 + max(w0, touching)]

    Notes
    -----
    Each object's distance map is computed only in its bounding box grown by ``3 sigma``:
    beyond it ``d2 > 3 sigma`` and the added weight is below ``w0 * exp(-4.5) = 0.011 w0``. The
    cost is then linear in the number of objects, not in objects x image.
    """
    instances = np.asarray(instances)
    height, width = instances.shape
    nearest = np.full((height, width), np.inf, np.float32)
    second = np.full((height, width), np.inf, np.float32)
    margin = int(math.ceil(3 * sigma)) + 1
    for index, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, height))
        cols = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, width))
        distance = ndi.distance_transform_edt(instances[rows, cols] != index).astype(np.float32)
        near, sec = nearest[rows, cols], second[rows, cols]
        # Insert this object's distance into the two smallest so far, per pixel.
        sec[:] = np.where(distance < near, near, np.minimum(sec, distance))
        near[:] = np.minimum(near, distance)
    # On background pixels nearest + second = d1 + d2 (inf where fewer than two objects are
    # near); on an object's pixels nearest = 0 (its own object), so it is the distance to the
    # nearest other object.
    gap = nearest + second
    weights = 1 + w0 * np.exp(-np.square(gap) / (2 * sigma ** 2))
    inside = instances > 0
    weights[inside] = 1 + touching * np.exp(-np.square(gap[inside]) / (2 * sigma ** 2))
    return weights.astype(np.float32)
