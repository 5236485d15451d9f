"""Tests of core.postprocess on synthetic probability maps with known objects."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from skimage.draw import disk, ellipse

from core.metrics import MetricInputError, instance_scores
from core.postprocess import (
    METHODS,
    PARAMETERS,
    ComponentsParams,
    KMeansWatershedParams,
    WatershedParams,
    binary_to_instances,
    components,
    elbow_cluster_centres,
    kmeans_watershed,
    postprocess,
    watershed,
)


def draw(shapes, size=(96, 128)) -> np.ndarray:
    """Truth labels: each shape ("disk", (row, column, radius)) or ("ellipse", (row, column, r_radius, c_radius))."""
    labels = np.zeros(size, np.int32)
    for object_id, (kind, args) in enumerate(shapes, start=1):
        rows, columns = disk(args[:2], args[2], shape=size) if kind == "disk" else ellipse(*args, shape=size)
        labels[rows, columns] = object_id
    return labels


def soft_map(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A float32 probability map: high inside objects, low outside, with noise that never crosses 0.5."""
    rng = np.random.default_rng(seed)
    inside = labels > 0
    return np.where(inside, 0.8 + 0.2 * rng.random(labels.shape), 0.3 * rng.random(labels.shape)).astype(np.float32)


TOUCHING_PAIR = [("disk", (48, 45, 15)), ("disk", (48, 74, 15))]


def assert_valid_labels(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> None:
    assert labels.dtype == np.int32 and labels.shape == probabilities.shape
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))  # contiguous 0..N
    assert not np.any(labels[probabilities < threshold])  # nothing outside the foreground (no holes here)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_returns_contiguous_int32_labels_inside_the_foreground(method):
    truth = draw([*TOUCHING_PAIR, ("disk", (20, 110, 8)), ("ellipse", (80, 110, 6, 12))])
    probabilities = soft_map(truth)
    labels = postprocess(probabilities, method)
    assert_valid_labels(labels, probabilities)
    assert labels.max() >= 3


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_an_empty_map_empty(method):
    labels = postprocess(np.zeros((40, 50), np.float32), method)
    assert labels.dtype == np.int32 and not labels.any()


def test_components_labels_each_connected_object():
    truth = draw([("disk", (30, 30, 10)), ("disk", (60, 90, 12))])
    labels = components(soft_map(truth))
    assert instance_scores(truth, labels).dsb_map == 1.0


def test_components_fills_holes_and_drops_small_objects():
    truth = draw([("disk", (40, 40, 15))])
    probabilities = soft_map(truth)
    probabilities[38:43, 38:43] = 0.1  # a hole inside the object
    probabilities[80:83, 100:103] = 0.9  # a 9-pixel speck
    labels = components(probabilities, ComponentsParams(min_size=10))
    assert labels.max() == 1 and labels[40, 40] == 1
    assert not components(probabilities, ComponentsParams(fill_holes=False, min_size=10))[40, 40]
    assert components(probabilities, ComponentsParams(min_size=9)).max() == 2


def test_components_threshold_is_inclusive_and_connectivity_is_honoured():
    diagonal = np.zeros((4, 4), np.float32)
    diagonal[0, 0] = diagonal[1, 1] = 0.5
    assert components(diagonal, ComponentsParams(min_size=0)).max() == 2  # 4-connected: two objects
    assert components(diagonal, ComponentsParams(min_size=0, connectivity=2)).max() == 1
    assert components(diagonal, ComponentsParams(threshold=0.6, min_size=0)).max() == 0


def test_watershed_separates_touching_discs():
    truth = draw(TOUCHING_PAIR)
    probabilities = soft_map(truth)
    assert components(probabilities).max() == 1
    labels = watershed(probabilities)
    scores = instance_scores(truth, labels)
    assert (scores.tp50, scores.fp50, scores.fn50) == (2, 0, 0)
    assert scores.mean_matched_iou > 0.9


def test_watershed_keeps_a_single_disc_whole_and_every_small_object():
    truth = draw([("disk", (40, 40, 18)), ("disk", (80, 100, 2))])
    labels = watershed(soft_map(truth), WatershedParams(min_size=0, min_distance=10))
    assert instance_scores(truth, labels).dsb_map == 1.0


def test_kmeans_watershed_separates_touching_discs_and_keeps_single_ones():
    truth = draw([*TOUCHING_PAIR, ("disk", (20, 112, 10))])
    labels = kmeans_watershed(soft_map(truth))
    scores = instance_scores(truth, labels)
    assert (scores.tp50, scores.fp50, scores.fn50) == (3, 0, 0)
    assert scores.mean_matched_iou > 0.9


def test_kmeans_watershed_is_reproducible_and_works_on_subsampled_components():
    truth = draw([("disk", (48, 40, 22)), ("disk", (48, 83, 22))])  # about 1500 pixels each
    probabilities = soft_map(truth)
    params = KMeansWatershedParams(max_points=100, random_state=3)
    first, second = kmeans_watershed(probabilities, params), kmeans_watershed(probabilities, params)
    np.testing.assert_array_equal(first, second)
    assert instance_scores(truth, first).tp50 == 2


def test_elbow_picks_one_cluster_for_a_disc_and_respects_the_bounds():
    rows, columns = disk((50, 50), 20)
    disc = np.column_stack([rows, columns])
    assert elbow_cluster_centres(disc, KMeansWatershedParams()).shape == (1, 2)
    all_points = KMeansWatershedParams(max_points=10_000)  # no subsampling: the centre is the mean
    np.testing.assert_allclose(elbow_cluster_centres(disc, all_points)[0], [50, 50], atol=1e-9)
    # Four blobs in a square: SSE steps of 0.52 and 0.54 before the large drop to K = 4.
    square = np.concatenate([disc + offset for offset in ([0, 0], [0, 100], [100, 0], [100, 100])])
    assert elbow_cluster_centres(square, KMeansWatershedParams()).shape == (4, 2)
    assert elbow_cluster_centres(square, KMeansWatershedParams(elbow_ratio=0.01)).shape == (1, 2)
    # Four blobs in a row: large drops at K = 2 and K = 4; max_clusters caps the search.
    row = np.concatenate([disc + [0, offset] for offset in (0, 100, 200, 300)])
    assert elbow_cluster_centres(row, KMeansWatershedParams()).shape == (4, 2)
    assert elbow_cluster_centres(row, KMeansWatershedParams(max_clusters=3)).shape == (2, 2)


def test_binary_to_instances():
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True  # touches the first square only diagonally
    mask[4:6, 3:6] = True
    labels = binary_to_instances(mask)
    assert labels.dtype == np.int32 and labels.max() == 3
    assert binary_to_instances(mask, connectivity=2).max() == 2
    np.testing.assert_array_equal(binary_to_instances(mask.astype(np.uint8) * 255), labels)
    with pytest.raises(MetricInputError, match="bool or integer"):
        binary_to_instances(mask.astype(np.float32))
    with pytest.raises(MetricInputError, match="connectivity"):
        binary_to_instances(mask, connectivity=3)


def test_registry_lists_every_method_with_its_parameters():
    from core.postprocess import CONTOUR_METHODS

    assert set(METHODS) == {"components", "watershed", "kmeans-watershed"}
    assert set(CONTOUR_METHODS) == {"seeded-watershed"}
    assert set(PARAMETERS) == set(METHODS) | set(CONTOUR_METHODS)
    for name, params_type in PARAMETERS.items():
        names = {field.name for field in fields(params_type)}
        assert {"threshold", "fill_holes", "min_size", "connectivity"} <= names, name
    truth = draw(TOUCHING_PAIR)
    by_name = postprocess(soft_map(truth), "watershed", min_distance=7, smoothing_sigma=0.0)
    np.testing.assert_array_equal(by_name, watershed(soft_map(truth), WatershedParams(min_distance=7, smoothing_sigma=0.0)))


def test_bad_input_gets_a_clear_error():
    probabilities = np.zeros((8, 8), np.float32)
    with pytest.raises(MetricInputError, match="unknown post-processing method"):
        postprocess(probabilities, "otsu")
    with pytest.raises(MetricInputError, match="has no parameter min_distance"):
        postprocess(probabilities, "components", min_distance=3)
    with pytest.raises(MetricInputError, match="2-D"):
        components(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(MetricInputError, match=r"\[0, 1\]"):
        components(probabilities + 2)
    with pytest.raises(MetricInputError, match="float"):
        components(np.zeros((8, 8), np.int32))
    with pytest.raises(MetricInputError, match="expected WatershedParams"):
        watershed(probabilities, ComponentsParams())
    with pytest.raises(MetricInputError, match="connectivity"):
        components(probabilities, ComponentsParams(connectivity=3))
    assert components(np.ones((8, 8), bool)).max() == 1  # bool masks are accepted


def test_memory_lean_helpers_match_scikit_image():
    """connected_components, label_sizes and _sequential give scikit-image's answers."""
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential

    from core.postprocess import _sequential, connected_components, label_sizes

    rng = np.random.default_rng(4)
    mask = rng.random((120, 90)) > 0.55
    for connectivity in (1, 2):
        ours = connected_components(mask, connectivity)
        assert ours.dtype == np.int32
        np.testing.assert_array_equal(ours, label(mask, connectivity=connectivity))
    labels = label(mask, connectivity=1).astype(np.int32)
    np.testing.assert_array_equal(label_sizes(labels, chunk=1000), np.bincount(labels.ravel()))
    labels[labels % 3 == 0] = 0  # gaps in the ids
    sequential = _sequential(labels)
    assert sequential.dtype == np.int32
    np.testing.assert_array_equal(sequential, relabel_sequential(labels)[0])
