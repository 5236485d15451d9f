"""Turn a probability map into instance labels.

Three named methods, each with a dataclass of parameters, listed in :data:`METHODS`
(name -> function) and :data:`PARAMETERS` (name -> parameter dataclass) so that the app
and the CLI can offer them:

- ``components``: threshold, fill holes, drop small objects, connected components;
- ``watershed``: the same foreground, split by a watershed of the distance transform
  from its peaks;
- ``kmeans-watershed`` (the paper's): per connected component, K-means on the pixel
  coordinates with K at the elbow of the sum-of-squared-errors curve; the cluster
  centres are the watershed markers;
- ``seeded-watershed`` (for models trained with target ``mask+contour``, listed in
  :data:`CONTOUR_METHODS`): the foreground minus the predicted outlines leaves one seed per
  object, and a watershed over the outline probability grows the seeds back to the
  foreground, so touching objects part where the network saw their border.

Every method returns int32 labels 0..N with contiguous ids (0 = background).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.segmentation import watershed as skimage_watershed
from threadpoolctl import threadpool_limits

from core.metrics import MetricInputError


@dataclass(frozen=True)
class ComponentsParams:
    """Parameters of ``components``.

    Attributes
    ----------
    threshold : float
        A pixel is foreground where ``probability >= threshold``.
    fill_holes : bool
        Fill holes enclosed by the foreground before labelling.
    min_size : int
        Connected components with fewer pixels are dropped.
    connectivity : int
        1: 4-connected (as the ISBI 2012 Fiji script), 2: 8-connected.
    """

    threshold: float = 0.5
    fill_holes: bool = True
    min_size: int = 16
    connectivity: int = 1


@dataclass(frozen=True)
class WatershedParams(ComponentsParams):
    """Parameters of ``watershed`` (the foreground ones of :class:`ComponentsParams`, plus below).

    Attributes
    ----------
    min_distance : int
        Minimum distance in pixels between two markers (peaks of the distance transform).
    smoothing_sigma : float
        Gaussian smoothing of the distance transform before finding peaks; it removes
        the ridge noise of pixelated outlines that would otherwise split objects.
    """

    min_distance: int = 5
    smoothing_sigma: float = 1.0


@dataclass(frozen=True)
class KMeansWatershedParams(ComponentsParams):
    """Parameters of ``kmeans-watershed`` (the foreground ones of :class:`ComponentsParams`, plus below).

    Attributes
    ----------
    max_clusters : int
        Upper bound on K per connected component (K-means runs for every K up to it, so
        the cost grows with it; clumps of more than 5 nuclei are rare in DSB 2018).
    elbow_ratio : float
        A step from K - 1 to K clusters is a large drop when SSE(K) < elbow_ratio *
        SSE(K - 1); K is the last large drop (see :func:`elbow_cluster_centres`). Cut in
        two, a disc keeps 0.64 of its SSE, two touching equal discs 0.35, ellipses 0.41
        (2:1) and 0.35 (3:1), so elongated objects are split too. On DSB 2018 nuclei single
        and touching ones overlap (median 0.51 vs 0.42); lower values split less.
    max_points : int
        Foreground pixels of a component subsampled for K-means (the watershed still
        labels every pixel).
    random_state : int
        Seed of the subsampling and of K-means, so results are reproducible.
    """

    max_clusters: int = 5
    elbow_ratio: float = 0.4
    max_points: int = 400
    random_state: int = 0


@dataclass(frozen=True)
class SeededWatershedParams(ComponentsParams):
    """Parameters of ``seeded-watershed`` (the foreground ones of :class:`ComponentsParams`, plus below).

    Attributes
    ----------
    contour_threshold : float
        A foreground pixel is part of a seed where the outline probability is below it. Low
        by default: a network's outline map stays faint (0.05-0.3) on the line where two
        objects touch, so a seed at 0.5 spans both. On DSB 2018, 0.05-0.1 scored best on
        the training images of three runs (docs/recipes.md, ``benchmarks.seeded_watershed``).
    min_seed_size : int
        Seeds with fewer pixels are dropped (a component left without a seed becomes one
        object, so a small object is never lost).
    """

    contour_threshold: float = 0.1
    min_seed_size: int = 4


# --------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """A 2-D float map in [0, 1] (bool masks are accepted as 0/1)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2:
        raise MetricInputError(f"expected a 2-D probability map, got shape {probabilities.shape}")
    if probabilities.dtype == bool:
        return probabilities.astype(np.float32)
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise MetricInputError(f"probability map must be float in [0, 1] or bool, got dtype {probabilities.dtype}")
    if probabilities.size:
        low, high = probabilities.min(), probabilities.max()
        if not (low >= 0.0 and high <= 1.0):
            raise MetricInputError(f"probability map must lie in [0, 1] without NaN, found range [{low}, {high}]")
    return probabilities


def _check_params(params, expected: type):
    if params is None:
        return expected()
    if not isinstance(params, expected):
        raise MetricInputError(f"expected {expected.__name__}, got {type(params).__name__}")
    if params.connectivity not in (1, 2):
        raise MetricInputError(f"connectivity must be 1 or 2, got {params.connectivity}")
    if params.min_size < 0:
        raise MetricInputError(f"min_size must be >= 0, got {params.min_size}")
    return params


def connected_components(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """int32 labels 1..N of the connected components of a bool mask (0 = background).

    Labelled straight into int32 with scipy: skimage's ``label`` gives int64, which for a
    64-megapixel upload is 512 MB before any conversion. The components are the same.
    """
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    labels = np.zeros(mask.shape, np.int32)
    ndi.label(mask, structure=structure, output=labels)
    return labels


def label_sizes(labels: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """Pixel count of every label id 0..max, counted ``chunk`` pixels at a time.

    ``np.bincount`` casts its input to int64: on a 64-megapixel label image that is a
    512 MB copy; in chunks it is a few MB.
    """
    flat = labels.reshape(-1)
    counts = np.zeros(int(labels.max(initial=0)) + 1, np.int64)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start:start + chunk], minlength=counts.size)
    return counts


def _foreground_components(probabilities: np.ndarray, params: ComponentsParams) -> np.ndarray:
    """Connected components (int32) of the thresholded, hole-filled foreground without small objects."""
    mask = _check_probabilities(probabilities) >= params.threshold
    if params.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    components = connected_components(mask, params.connectivity)
    if params.min_size > 1:
        # Same result as skimage's remove_small_objects, without its warning on one-object images.
        too_small = label_sizes(components) < params.min_size
        too_small[0] = False
        components[too_small[components]] = 0
    return components


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Non-negative integer labels renumbered 0..N (in order of their ids) as int32.

    A lookup table over the ids present, rather than skimage's ``relabel_sequential``,
    whose int64 maps cost 1 GB on a 64-megapixel image.
    """
    top = int(labels.max(initial=0))
    present = np.zeros(top + 1, bool)
    present[labels.reshape(-1)] = True
    present[0] = False
    table = np.cumsum(present, dtype=np.int32)
    table[~present] = 0
    return table[labels]


def _ensure_one_marker_per_component(markers: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Add the whole component as a marker where no marker fell, so no object is lost."""
    has_marker = np.zeros(int(components.max()) + 1, dtype=bool)
    has_marker[components[markers > 0]] = True
    missing = ~has_marker[components] & (components > 0)
    if missing.any():
        markers = markers.copy()
        markers[missing] = components[missing] + int(markers.max())
    return markers


# --------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------


def components(probabilities: np.ndarray, params: ComponentsParams | None = None) -> np.ndarray:
    """Connected components of the thresholded probability map.

    Parameters
    ----------
    probabilities : ndarray of float in [0, 1], shape (H, W) (bool masks accepted)
    params : ComponentsParams, optional

    Returns
    -------
    ndarray of int32, shape (H, W), labels 0..N
    """
    params = _check_params(params, ComponentsParams)
    return _sequential(_foreground_components(probabilities, params))


def watershed(probabilities: np.ndarray, params: WatershedParams | None = None) -> np.ndarray:
    """Split touching objects by a watershed of the distance transform from its peaks.

    Parameters
    ----------
    probabilities : ndarray of float in [0, 1], shape (H, W) (bool masks accepted)
    params : WatershedParams, optional

    Returns
    -------
    ndarray of int32, shape (H, W), labels 0..N
    """
    params = _check_params(params, WatershedParams)
    foreground = _foreground_components(probabilities, params)
    mask = foreground > 0
    distance = ndi.distance_transform_edt(mask)
    if params.smoothing_sigma > 0:
        distance = ndi.gaussian_filter(distance, params.smoothing_sigma)
    peaks = peak_local_max(distance, min_distance=max(int(params.min_distance), 1), labels=foreground,
                           exclude_border=False)
    peak_mask = np.zeros(mask.shape, dtype=bool)
    peak_mask[tuple(peaks.T)] = True
    # Adjacent peak pixels (a flat ridge) make one marker, not several.
    markers = label(peak_mask, connectivity=2).astype(np.int32)
    markers = _ensure_one_marker_per_component(markers, foreground)
    return _sequential(skimage_watershed(-distance, markers, mask=mask))


def elbow_cluster_centres(points: np.ndarray, params: KMeansWatershedParams) -> np.ndarray:
    """K-means centres of ``points`` with K at the elbow of the SSE curve.

    The SSE curve is computed for K = 1 .. ``max_clusters``; the elbow is where it
    flattens for good, the largest K whose step still removes a large share of the
    error, SSE(K) < elbow_ratio * SSE(K - 1), and K = 1 when no step does. Stopping at
    the first small step instead would miss four blobs in a square (steps of 0.52, 0.54
    and then 0.14), and the usual chord-distance elbow rules can never answer K = 1,
    the most common answer for a connected component.

    Parameters
    ----------
    points : ndarray of float, shape (n, 2)
        Pixel coordinates (row, column) of one connected component.
    params : KMeansWatershedParams

    Returns
    -------
    ndarray of float64, shape (K, 2)
    """
    from sklearn.cluster import KMeans

    points = np.asarray(points, dtype=np.float64)
    if len(points) > params.max_points:
        rng = np.random.default_rng(params.random_state)
        points = points[rng.choice(len(points), params.max_points, replace=False)]
    centres = [points.mean(axis=0, keepdims=True)]
    sse = [float(((points - centres[0]) ** 2).sum())]
    for n_clusters in range(2, min(params.max_clusters, len(points)) + 1):  # pixels are distinct points
        kmeans = KMeans(n_clusters=n_clusters, n_init=1, random_state=params.random_state).fit(points)
        centres.append(kmeans.cluster_centers_)
        sse.append(float(kmeans.inertia_))
    big_drops = [k for k in range(1, len(sse)) if sse[k] < params.elbow_ratio * sse[k - 1]]
    return centres[big_drops[-1]] if big_drops else centres[0]


def kmeans_watershed(probabilities: np.ndarray, params: KMeansWatershedParams | None = None) -> np.ndarray:
    """The paper's post-processing: K-means centres (K by the elbow) as watershed markers.

    K-means runs per connected component, not over the whole image: the question the
    elbow must answer is "how many objects are in this clump", and per component an
    isolated object gives K = 1 and two touching nuclei K = 2. Over the whole image the
    SSE curve is dominated by the spread between separate objects, its elbow falls far
    below the number of objects, and single centres land between objects.

    Parameters
    ----------
    probabilities : ndarray of float in [0, 1], shape (H, W) (bool masks accepted)
    params : KMeansWatershedParams, optional

    Returns
    -------
    ndarray of int32, shape (H, W), labels 0..N
    """
    params = _check_params(params, KMeansWatershedParams)
    if params.max_clusters < 1 or params.max_points < 2:
        raise MetricInputError(f"max_clusters must be >= 1 and max_points >= 2, got {params}")
    foreground = _foreground_components(probabilities, params)
    mask = foreground > 0
    markers = np.zeros(mask.shape, dtype=np.int32)
    # Pixel indices of every component in one sort instead of one scan per component.
    pixel_indices = np.flatnonzero(foreground)
    pixel_labels = foreground.reshape(-1)[pixel_indices]
    order = np.argsort(pixel_labels, kind="stable")
    boundaries = np.cumsum(np.bincount(pixel_labels)[1:])[:-1]
    next_marker = 1
    # K-means on a few hundred points is far slower with several OpenMP threads than with one.
    with threadpool_limits(limits=1, user_api="openmp"):
        for indices in np.split(pixel_indices[order], boundaries):
            if indices.size == 0:
                continue
            points = np.column_stack(np.unravel_index(indices, mask.shape))
            # A component too small to hold two objects of min_size pixels is one object.
            if indices.size >= max(2 * params.min_size, 4):
                centres = elbow_cluster_centres(points, params)
            else:
                centres = points.mean(axis=0, keepdims=True)
            # The component pixel nearest each centre: a centre of a curved object may lie outside it.
            nearest = np.argmin(((points[None, :, :] - centres[:, None, :]) ** 2).sum(-1), axis=1)
            for row, column in points[nearest]:
                markers[row, column] = next_marker
                next_marker += 1
    distance = ndi.distance_transform_edt(mask)
    return _sequential(skimage_watershed(-distance, markers, mask=mask))


def seeded_watershed(probabilities: np.ndarray, contour: np.ndarray,
                     params: SeededWatershedParams | None = None) -> np.ndarray:
    """Objects from a foreground map and an outline map (a ``mask+contour`` model's two outputs).

    Parameters
    ----------
    probabilities : ndarray of float in [0, 1], shape (H, W), the foreground
    contour : ndarray of float in [0, 1], shape (H, W), the probability of an object's outline
    params : SeededWatershedParams, optional

    Returns
    -------
    ndarray of int32, shape (H, W), labels 0..N

    Notes
    -----
    Seeds are 4-connected, so a one-pixel diagonal outline still parts two of them. The
    watershed floods the outline probability from the seeds inside the foreground: each
    pixel joins the seed it reaches over the lowest outline ridge.
    """
    params = _check_params(params, SeededWatershedParams)
    contour = _check_probabilities(contour)
    if contour.shape != np.shape(probabilities):
        raise MetricInputError(f"contour map shape {contour.shape} differs from the probability map's "
                               f"{np.shape(probabilities)}")
    foreground = _foreground_components(probabilities, params)
    mask = foreground > 0
    seeds = label(mask & (contour < params.contour_threshold), connectivity=1).astype(np.int32)
    if params.min_seed_size > 1 and seeds.max() > 0:
        small = label_sizes(seeds) < params.min_seed_size
        small[0] = False
        seeds[small[seeds]] = 0
    seeds = _ensure_one_marker_per_component(seeds, foreground)
    return _sequential(skimage_watershed(contour, seeds, mask=mask))


def binary_to_instances(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Instances of a truth mask that has none: its connected components.

    Parameters
    ----------
    mask : ndarray of bool (or int, read as ``!= 0``), any shape
    connectivity : int
        1: 4-connected in 2-D (as the ISBI 2012 Fiji script), up to ``mask.ndim``.

    Returns
    -------
    ndarray of int32, same shape, labels 0..N
    """
    mask = np.asarray(mask)
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.integer):
            raise MetricInputError(f"mask must be bool or integer, got dtype {mask.dtype}")
        mask = mask != 0
    if not 1 <= connectivity <= max(mask.ndim, 1):
        raise MetricInputError(f"connectivity must be between 1 and {mask.ndim}, got {connectivity}")
    return connected_components(mask, connectivity)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

#: Method name -> function(probabilities, params) -> int32 labels.
METHODS: dict[str, Callable[..., np.ndarray]] = {
    "components": components,
    "watershed": watershed,
    "kmeans-watershed": kmeans_watershed,
}

#: Methods that also need an outline map (from a model trained with target "mask+contour"):
#: name -> function(probabilities, contour, params) -> int32 labels.
CONTOUR_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "seeded-watershed": seeded_watershed,
}

#: Method name -> its parameter dataclass (defaults are the dataclass defaults).
PARAMETERS: dict[str, type] = {
    "components": ComponentsParams,
    "watershed": WatershedParams,
    "kmeans-watershed": KMeansWatershedParams,
    "seeded-watershed": SeededWatershedParams,
}


def methods_for(has_contour: bool) -> list[str]:
    """The methods a model can use: all of them when it predicts outlines, else :data:`METHODS`."""
    return list(METHODS) + (list(CONTOUR_METHODS) if has_contour else [])


def postprocess(probabilities: np.ndarray, method: str = "components", contour: np.ndarray | None = None,
                **params) -> np.ndarray:
    """Run a method by name with parameters given as keywords.

    ``contour`` is the outline probability map, needed by the :data:`CONTOUR_METHODS` (and
    ignored by the others).

    >>> labels = postprocess(probabilities, "watershed", min_distance=7)  # doctest: +SKIP
    """
    if method not in PARAMETERS:
        raise MetricInputError(f"unknown post-processing method {method!r}; choose one of {', '.join(PARAMETERS)}")
    params_type = PARAMETERS[method]
    known = {field.name for field in fields(params_type)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise MetricInputError(f"{method} has no parameter {', '.join(unknown)}; its parameters: {', '.join(sorted(known))}")
    if method in CONTOUR_METHODS:
        if contour is None:
            raise MetricInputError(f"{method} needs an outline map: use a model trained with target "
                                   "'mask+contour' (train --target mask+contour)")
        return CONTOUR_METHODS[method](probabilities, contour, params_type(**params))
    return METHODS[method](probabilities, params_type(**params))


def postprocess_parameters(method: str) -> list[dict[str, Any]]:
    """The tunable parameters of a method, for a settings form: name, type name and default.

    The connectivity (the dataset kind's rule, :data:`core.datasets.base.CONNECTIVITY`), the
    threshold (set beside the method) and the random state (fixed for reproducible
    labels) are left out.

    Raises
    ------
    MetricInputError
        (a UNetLabError) for an unknown method.
    """
    if method not in PARAMETERS:
        raise MetricInputError(f"unknown post-processing method {method!r}; choose one of {', '.join(PARAMETERS)}")
    return [{"name": item.name, "type": type(item.default).__name__, "default": item.default}
            for item in fields(PARAMETERS[method]) if item.name not in ("threshold", "random_state", "connectivity")]
