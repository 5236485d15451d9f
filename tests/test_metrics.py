"""Tests of core.metrics against hand-worked cases, scikit-learn / scikit-image and slow references."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from sklearn import metrics as skm
from skimage.metrics import adapted_rand_error, variation_of_information

from core.errors import UNetLabError
from core.metrics import (
    DSB_THRESHOLDS,
    METRIC_NAMES,
    N_PROBABILITY_BINS,
    PAPER_THRESHOLDS,
    InstanceScores,
    MetricInputError,
    PixelCounts,
    PixelCurveAccumulator,
    PixelCurves,
    contingency,
    foreground_restricted_scores,
    instance_scores,
    iou_matrix,
    metric_name,
    pixel_counts,
    probability_bin,
    score_label_image,
    summarize_instance_scores,
    summarize_label_scores,
)


def acceptance_pair() -> tuple[np.ndarray, np.ndarray]:
    """Three truth squares; A found exactly, B shifted 4 px (IoU 16/24), C missed, one false object."""
    truth = np.zeros((100, 100), np.uint16)
    truth[10:30, 10:30] = 1
    truth[10:30, 50:70] = 2
    truth[60:80, 10:30] = 3
    prediction = np.zeros_like(truth)
    prediction[10:30, 10:30] = 7
    prediction[10:30, 54:74] = 9
    prediction[60:80, 60:80] = 4
    return truth, prediction


def random_label_pair(seed: int, shape=(64, 64), n_objects=12) -> tuple[np.ndarray, np.ndarray]:
    """Random overlapping rectangles with scattered ids, and a perturbed copy as the prediction."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.int32)
    for object_id in rng.choice(np.arange(1, 1000), n_objects, replace=False):
        top, left = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        height, width = rng.integers(3, 16, size=2)
        truth[top : top + height, left : left + width] = object_id
    prediction = np.roll(truth, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1)).astype(np.int64) * 3
    ids = np.unique(prediction)[1:]
    if ids.size >= 2:  # merge two objects, drop one, add a false one
        prediction[prediction == ids[0]] = ids[1]
    if ids.size >= 3:
        prediction[prediction == ids[2]] = 0
    prediction[rng.integers(0, shape[0] - 5) :][:5, :5] = 5001
    return truth, prediction


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def test_metric_names_hold_the_exact_display_names():
    assert METRIC_NAMES["dsb_map"] == "DSB mAP, IoU 0.50 to 0.95, TP/(TP+FP+FN)"
    assert METRIC_NAMES["paper_map"] == "Paper mAP, eq. (4)-(5), IoU 0.50 to 1.00, TP/(TP+FP)"
    assert METRIC_NAMES["ap50"] == "AP@0.5, TP/(TP+FP+FN)"
    assert METRIC_NAMES["pixel_f1"] == "Pixel F1 (Dice) at threshold 0.5"
    assert METRIC_NAMES["roc_auc"] == "ROC-AUC (pixels)"
    assert METRIC_NAMES["average_precision"] == "Average precision (pixels)"
    assert METRIC_NAMES["v_rand"] == "V_Rand (foreground-restricted)"
    assert METRIC_NAMES["v_info"] == "V_Info (foreground-restricted)"
    assert len(set(METRIC_NAMES.values())) == len(METRIC_NAMES)
    assert metric_name("pixel_f1", 0.3) == "Pixel F1 (Dice) at threshold 0.3"
    assert metric_name("dsb_map", 0.3) == METRIC_NAMES["dsb_map"]
    with pytest.raises(MetricInputError, match="unknown metric key"):
        metric_name("dice")


def test_every_named_score_uses_a_registered_name():
    truth, prediction = acceptance_pair()
    named = score_label_image(truth, prediction).named()
    assert set(named) <= set(METRIC_NAMES.values())
    assert named[METRIC_NAMES["dsb_map"]] == pytest.approx(0.32, abs=1e-12)


# --------------------------------------------------------------------------------------
# Pixel counts
# --------------------------------------------------------------------------------------


def test_pixel_counts_hand_case():
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    prediction = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], bool)
    counts = pixel_counts(prediction, truth)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 1, 1, 4)
    assert counts.precision == pytest.approx(2 / 3)
    assert counts.recall == pytest.approx(2 / 3)
    assert counts.f1 == counts.dice == pytest.approx(2 / 3)
    assert counts.iou == pytest.approx(0.5)
    assert counts.accuracy == pytest.approx(6 / 8)
    assert counts.negative_f1 == pytest.approx(8 / 10)


def test_pixel_counts_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    truth = rng.random((50, 60)) < 0.3
    probabilities = np.clip(truth * 0.4 + rng.random(truth.shape) * 0.7, 0, 1).astype(np.float32)
    counts = pixel_counts(probabilities, truth, threshold=0.6)
    predicted = probabilities.ravel() >= 0.6
    assert counts.precision == pytest.approx(skm.precision_score(truth.ravel(), predicted))
    assert counts.recall == pytest.approx(skm.recall_score(truth.ravel(), predicted))
    assert counts.f1 == pytest.approx(skm.f1_score(truth.ravel(), predicted))
    assert counts.iou == pytest.approx(skm.jaccard_score(truth.ravel(), predicted))
    assert counts.accuracy == pytest.approx(skm.accuracy_score(truth.ravel(), predicted))
    assert counts.negative_f1 == pytest.approx(skm.f1_score(truth.ravel(), predicted, pos_label=False))


def test_pixel_counts_sum_to_the_counts_of_the_whole_set():
    rng = np.random.default_rng(2)
    images = [(rng.random((20, 30)) < 0.5, rng.random((20, 30)) < 0.4) for _ in range(4)]
    summed = sum(pixel_counts(prediction, truth) for prediction, truth in images)
    whole = pixel_counts(np.concatenate([p for p, _ in images]), np.concatenate([t for _, t in images]))
    assert summed == whole
    assert summed.n_pixels == 4 * 600


def test_all_positive_baseline_scores_2p_over_1_plus_p():
    truth = np.zeros(100, bool)
    truth[:78] = True  # ISBI 2012: 78% of pixels are cell interior
    counts = pixel_counts(np.zeros(100, bool), truth)
    baseline = counts.all_positive_baseline()
    assert baseline == pixel_counts(np.ones(100, bool), truth)
    assert baseline.f1 == pytest.approx(2 * 0.78 / 1.78)
    assert round(baseline.f1, 3) == 0.876
    assert baseline.negative_f1 == 0.0


def test_all_positive_baseline_on_real_isbi_labels(isbi2012_root):
    import tifffile

    labels = tifffile.imread(isbi2012_root / "train-labels.tif")[:5]
    counts = pixel_counts(np.ones(labels.shape, bool), labels == 255)
    assert 0.7 < counts.prevalence < 0.85
    assert counts.f1 == pytest.approx(2 * counts.prevalence / (1 + counts.prevalence))
    assert 0.82 < counts.f1 < 0.92


def test_pixel_counts_empty_cases():
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    both_empty = pixel_counts(empty, empty)
    assert (both_empty.precision, both_empty.recall, both_empty.f1, both_empty.iou) == (1.0, 1.0, 1.0, 1.0)
    missed = pixel_counts(empty, full)
    assert (missed.precision, missed.recall, missed.f1, missed.iou) == (0.0, 0.0, 0.0, 0.0)
    false_alarm = pixel_counts(full, empty)
    assert (false_alarm.precision, false_alarm.recall, false_alarm.f1) == (0.0, 0.0, 0.0)
    assert PixelCounts().accuracy == 1.0


def test_pixel_counts_threshold_is_inclusive_and_inputs_are_checked():
    probabilities = np.array([0.2, 0.5, 0.7], np.float32)
    truth = np.array([False, True, True])
    assert pixel_counts(probabilities, truth, threshold=0.5).tp == 2
    with pytest.raises(MetricInputError, match="differ in shape"):
        pixel_counts(probabilities, truth[:2])
    with pytest.raises(MetricInputError, match=r"\[0, 1\]"):
        pixel_counts(np.array([0.1, np.nan, 0.3]), truth)
    with pytest.raises(MetricInputError, match=r"\[0, 1\]"):
        pixel_counts(np.array([0.1, 1.5, 0.3]), truth)
    with pytest.raises(MetricInputError, match="bool or integer mask"):
        pixel_counts(probabilities, truth.astype(np.float32))
    assert issubclass(MetricInputError, UNetLabError)


# --------------------------------------------------------------------------------------
# ROC and precision-recall curves
# --------------------------------------------------------------------------------------


def test_probability_bins_are_monotone_and_keep_saturated_values_apart():
    rng = np.random.default_rng(3)
    values = np.sort(np.concatenate([rng.random(10_000), [0.0, 0.5, 1.0], 1 - rng.random(100) * 1e-6])).astype(np.float32)
    bins = probability_bin(values)
    assert np.all(np.diff(bins) >= 0)
    assert bins[0] == 0 and bins[-1] == N_PROBABILITY_BINS - 1
    # Neighbouring float32 values near 1 and around 0.5 fall in different bins.
    near_one = np.float32(1) - np.float32(2**-24) * np.arange(1, 6, dtype=np.float32)
    assert len(np.unique(probability_bin(near_one))) == 5
    half = np.float32(0.5)
    assert probability_bin(np.nextafter(half, np.float32(1))) > probability_bin(half)


def test_curves_are_exact_when_every_distinct_probability_has_its_own_bin():
    rng = np.random.default_rng(4)
    truth = rng.random(200_000) < 0.35
    # Probabilities quantised like an 8-bit map: 256 distinct values, many ties.
    levels = np.clip(np.round((rng.normal(0.5, 0.25, truth.size) + 0.25 * truth) * 255), 0, 255)
    probabilities = (levels / 255).astype(np.float32)
    accumulator = PixelCurveAccumulator()
    accumulator.update(probabilities, truth)
    curves = accumulator.result(max_points=10_000)
    fpr, tpr, _ = skm.roc_curve(truth, probabilities, drop_intermediate=False)
    np.testing.assert_allclose(curves.fpr, fpr, atol=1e-12)
    np.testing.assert_allclose(curves.tpr, tpr, atol=1e-12)
    assert curves.roc_auc == pytest.approx(skm.roc_auc_score(truth, probabilities), abs=1e-12)
    assert curves.average_precision == pytest.approx(skm.average_precision_score(truth, probabilities), abs=1e-12)
    np.testing.assert_allclose(curves.thresholds[1:], np.sort(np.unique(probabilities))[::-1], rtol=3e-4)


@pytest.mark.parametrize("logit_scale", [2.0, 12.0])
def test_curves_agree_with_scikit_learn_within_1e_3(logit_scale):
    """Smooth probabilities and saturated ones (a confident network: most pixels within 1e-4 of 0 or 1)."""
    rng = np.random.default_rng(5)
    truth = rng.random(1_000_000) < 0.22
    logits = (rng.normal(0, 1, truth.size) + np.where(truth, 1.5, -1.0)) * logit_scale
    probabilities = (1 / (1 + np.exp(-logits))).astype(np.float32)
    accumulator = PixelCurveAccumulator()
    for part in np.split(np.arange(truth.size), 4):  # four "images"
        accumulator.update(probabilities[part].reshape(-1, 100), truth[part].reshape(-1, 100))
    curves = accumulator.result()
    assert abs(curves.roc_auc - skm.roc_auc_score(truth, probabilities)) < 1e-3
    assert abs(curves.average_precision - skm.average_precision_score(truth, probabilities)) < 1e-3
    assert (curves.n_positive, curves.n_negative) == (int(truth.sum()), int((~truth).sum()))


def test_curves_are_downsampled_and_well_formed():
    rng = np.random.default_rng(6)
    truth = rng.random(300_000) < 0.5
    probabilities = np.clip(rng.normal(0.4 + 0.2 * truth, 0.2), 0, 1).astype(np.float32)
    accumulator = PixelCurveAccumulator()
    accumulator.update(probabilities, truth)
    curves = accumulator.result(max_points=1000)
    assert 500 <= curves.fpr.size <= 1000
    for array in (curves.tpr, curves.precision, curves.recall, curves.thresholds):
        assert array.shape == curves.fpr.shape
    assert (curves.fpr[0], curves.tpr[0], curves.precision[0], curves.thresholds[0]) == (0.0, 0.0, 1.0, np.inf)
    assert (curves.fpr[-1], curves.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(curves.fpr) >= 0) and np.all(np.diff(curves.tpr) >= 0)
    assert np.all(np.diff(curves.thresholds) <= 0)
    np.testing.assert_array_equal(curves.recall, curves.tpr)
    assert curves.precision[-1] == pytest.approx(truth.mean())
    # The stored curve keeps the area: trapezoid on 1000 points is close to the exact one.
    assert np.trapezoid(curves.tpr, curves.fpr) == pytest.approx(curves.roc_auc, abs=1e-3)


def test_curves_round_trip_through_npz(tmp_path):
    rng = np.random.default_rng(7)
    truth = rng.random(5000) < 0.3
    accumulator = PixelCurveAccumulator()
    accumulator.update(rng.random(5000).astype(np.float32), truth)
    curves = accumulator.result()
    np.savez(tmp_path / "curves.npz", **curves.to_dict())
    with np.load(tmp_path / "curves.npz") as stored:
        loaded = PixelCurves.from_dict(stored)
    for name in ("fpr", "tpr", "precision", "recall", "thresholds"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(curves, name))
    assert (loaded.roc_auc, loaded.average_precision) == (curves.roc_auc, curves.average_precision)
    assert (loaded.n_positive, loaded.n_negative) == (curves.n_positive, curves.n_negative)
    with pytest.raises(MetricInputError, match="lack roc_auc"):
        PixelCurves.from_dict({key: value for key, value in curves.to_dict().items() if key != "roc_auc"})


def test_curves_with_one_class_or_no_pixels():
    only_negative = PixelCurveAccumulator()
    only_negative.update(np.array([0.1, 0.8], np.float32), np.array([False, False]))
    curves = only_negative.result()
    assert math.isnan(curves.roc_auc) and math.isnan(curves.average_precision)
    only_positive = PixelCurveAccumulator()
    only_positive.update(np.array([0.1, 0.8], np.float32), np.array([True, True]))
    curves = only_positive.result()
    assert math.isnan(curves.roc_auc) and curves.average_precision == 1.0
    with pytest.raises(MetricInputError, match="no pixels"):
        PixelCurveAccumulator().result()
    with pytest.raises(MetricInputError, match="float array"):
        PixelCurveAccumulator().update(np.array([0, 1]), np.array([False, True]))


# --------------------------------------------------------------------------------------
# Instance metrics
# --------------------------------------------------------------------------------------


def test_acceptance_case():
    truth, prediction = acceptance_pair()
    scores = instance_scores(truth, prediction)
    np.testing.assert_allclose(scores.dsb_per_threshold, [0.5] * 4 + [0.2] * 6)
    assert scores.dsb_map == pytest.approx(0.32, abs=1e-12)
    assert (scores.tp50, scores.fp50, scores.fn50) == (2, 1, 1)
    assert scores.ap50 == pytest.approx(0.5)
    assert scores.precision50 == scores.recall50 == scores.f1_50 == pytest.approx(2 / 3)
    assert scores.mean_matched_iou == pytest.approx((1 + 16 / 24) / 2)
    # Paper: a match at IoU >= r. TP/(TP+FP) = 2/3 for r <= 0.65 (A at IoU 1, B at 2/3), then 1/3 for
    # 0.70..1.00: A is pixel-perfect, so it counts at r = 1.00 too. (8/3 + 7/3) / 11 = 5/11.
    np.testing.assert_allclose(scores.paper_per_threshold, [2 / 3] * 4 + [1 / 3] * 7)
    assert scores.paper_map == pytest.approx(5 / 11)


def test_paper_map_counts_a_match_at_iou_equal_to_the_threshold():
    # One truth object of 12 pixels inside a predicted object of 12 + k: IoU = 12 / (12 + k) exactly.
    truth = np.zeros(16, np.int32)
    truth[:12] = 1
    prediction = np.zeros(16, np.int32)
    prediction[:15] = 5  # IoU 12/15 = 0.80 exactly
    scores = instance_scores(truth, prediction)
    # Paper (IoU >= r): matched for r = 0.50 .. 0.80 (7 thresholds), not 0.85 .. 1.00 (4): 7/11.
    np.testing.assert_array_equal(scores.paper_per_threshold, [1.0] * 7 + [0.0] * 4)
    assert scores.paper_map == pytest.approx(7 / 11)
    # DSB (IoU > t): matched for t = 0.50 .. 0.75 only (6 of 10): at t = 0.80 the IoU is not above it.
    np.testing.assert_array_equal(scores.dsb_per_threshold, [1.0] * 6 + [0.0] * 4)
    assert scores.dsb_map == pytest.approx(0.6)


def test_paper_map_at_iou_exactly_one_scores_every_threshold():
    truth = np.zeros((8, 8), np.int32)
    truth[2:5, 2:6], truth[6:8, 0:3] = 3, 9
    prediction = np.where(truth == 3, 40, np.where(truth == 9, 2, 0))  # the same objects, other ids
    scores = instance_scores(truth, prediction)
    np.testing.assert_array_equal(scores.paper_per_threshold, np.ones(11))  # r = 1.00 counts too
    assert scores.paper_map == 1.0 and scores.dsb_map == 1.0
    one_pixel_off = prediction.copy()
    one_pixel_off[2, 2] = 0  # object 3: IoU 11/12 < 1
    scores = instance_scores(truth, one_pixel_off)
    # r = 1.00: 1 of 2 predicted objects is pixel-perfect; 11/12 = 0.9167 >= 0.90 but < 0.95.
    np.testing.assert_allclose(scores.paper_per_threshold, [1.0] * 9 + [0.5, 0.5])


def test_paper_map_counts_a_match_at_iou_exactly_one_half_once():
    truth = np.ones((10, 20), np.int32)
    halves = np.zeros_like(truth)
    halves[:, :10], halves[:, 10:] = 1, 2  # each half has IoU exactly 0.5 with the one truth object
    scores = instance_scores(truth, halves)
    # r = 0.50: one match (one truth object), TP/(TP+FP) = 1/2; nothing above 0.5. DSB: no match.
    np.testing.assert_array_equal(scores.paper_per_threshold, [0.5] + [0.0] * 10)
    assert scores.half_matches == 1 and scores.dsb_map == 0.0 and scores.tp50 == 0
    # Two truth objects, each exactly half of one predicted object: one match at r = 0.50.
    two = np.zeros_like(truth)
    two[:, :10], two[:, 10:] = 4, 8
    merged = instance_scores(two, np.ones_like(truth))
    assert merged.half_matches == 1 and merged.paper_per_threshold[0] == 1.0  # 1 TP of 1 predicted
    # Two separate exact halves (two truth objects, two predictions, each pair at IoU 0.5): two matches.
    truth_pair = np.zeros((10, 40), np.int32)
    truth_pair[:, :20], truth_pair[:, 20:] = 1, 2
    predicted_pair = np.zeros_like(truth_pair)
    predicted_pair[:, :10], predicted_pair[:, 20:30] = 5, 6
    scores = instance_scores(truth_pair, predicted_pair)
    assert scores.half_matches == 2 and scores.paper_per_threshold[0] == 1.0


def test_thresholds_are_exact_decimals():
    np.testing.assert_array_equal(DSB_THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert PAPER_THRESHOLDS.size == 11 and PAPER_THRESHOLDS[-1] == 1.0


@pytest.mark.parametrize("overlap, union, first_failing_threshold", [(9, 12, 0.75), (11, 20, 0.55), (3, 4, 0.75)])
def test_a_match_needs_iou_strictly_above_the_threshold(overlap, union, first_failing_threshold):
    truth = np.zeros(union, np.int32)
    prediction = np.zeros(union, np.int32)
    truth[:overlap] = 1  # truth inside prediction: IoU = overlap / union exactly
    prediction[:] = 1
    scores = instance_scores(truth, prediction)
    expected = (DSB_THRESHOLDS < first_failing_threshold).astype(float)
    np.testing.assert_array_equal(scores.dsb_per_threshold, expected)


def test_empty_cases():
    objects = np.zeros((10, 10), np.int32)
    objects[2:5, 2:5] = 3
    empty = np.zeros_like(objects)
    both_empty = instance_scores(empty, empty)
    assert (both_empty.dsb_map, both_empty.paper_map, both_empty.ap50, both_empty.f1_50) == (1.0, 1.0, 1.0, 1.0)
    assert math.isnan(both_empty.mean_matched_iou)
    empty_prediction = instance_scores(objects, empty)
    assert (empty_prediction.dsb_map, empty_prediction.paper_map, empty_prediction.recall50) == (0.0, 0.0, 0.0)
    assert (empty_prediction.tp50, empty_prediction.fp50, empty_prediction.fn50) == (0, 0, 1)
    empty_truth = instance_scores(empty, objects)
    assert (empty_truth.dsb_map, empty_truth.paper_map, empty_truth.precision50) == (0.0, 0.0, 0.0)
    assert (empty_truth.tp50, empty_truth.fp50, empty_truth.fn50) == (0, 1, 0)


def test_one_object_split_in_two():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :] = 1
    halves = np.zeros_like(truth)
    halves[:, :10], halves[:, 10:] = 1, 2  # each half has IoU exactly 0.5: no match
    scores = instance_scores(truth, halves)
    assert (scores.tp50, scores.fp50, scores.fn50, scores.dsb_map) == (0, 2, 1, 0.0)
    unequal = np.zeros_like(truth)
    unequal[:, :14], unequal[:, 14:] = 1, 2  # the larger part has IoU 0.7
    scores = instance_scores(truth, unequal)
    assert (scores.tp50, scores.fp50, scores.fn50) == (1, 1, 0)
    # IoU 0.7 matches for t = 0.50..0.65 only; each time TP/(TP+FP+FN) = 1/2.
    assert scores.dsb_map == pytest.approx(4 * 0.5 / 10)


def test_two_objects_merged_into_one():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 4, 8
    merged = np.ones_like(truth)
    scores = instance_scores(truth, merged)
    assert (scores.tp50, scores.fp50, scores.fn50, scores.dsb_map) == (0, 1, 2, 0.0)
    truth[:, :13] = 4  # now the merged object covers truth 4 (13 px wide) with IoU 0.65
    scores = instance_scores(truth, merged)
    assert (scores.tp50, scores.fp50, scores.fn50) == (1, 0, 1)
    assert scores.dsb_map == pytest.approx(3 * 0.5 / 10)


def test_label_ids_need_not_be_contiguous():
    truth, prediction = random_label_pair(8)
    _, compact_truth = np.unique(truth, return_inverse=True)
    _, compact_prediction = np.unique(prediction, return_inverse=True)
    scattered = instance_scores(truth.astype(np.uint64) * 1_000_003, prediction)
    compact = instance_scores(compact_truth.reshape(truth.shape), compact_prediction.reshape(truth.shape))
    assert scattered.dsb_map == compact.dsb_map
    np.testing.assert_array_equal(scattered.matched_ious, compact.matched_ious)
    huge_ids = prediction.astype(np.int64) * 10**12  # sparse ids take the sorting path
    assert instance_scores(truth, huge_ids).dsb_map == compact.dsb_map


def slow_iou_matrix(truth, prediction):
    truth_ids = [i for i in np.unique(truth) if i != 0]
    predicted_ids = [j for j in np.unique(prediction) if j != 0]
    iou = np.zeros((len(truth_ids), len(predicted_ids)))
    for (row, i), (column, j) in product(enumerate(truth_ids), enumerate(predicted_ids)):
        a, b = truth == i, prediction == j
        iou[row, column] = (a & b).sum() / (a | b).sum()
    return iou


def slow_instance_scores(truth, prediction):
    """Per-object loops, greedy one-to-one matching by decreasing IoU at each threshold."""
    iou = slow_iou_matrix(truth, prediction)
    n_truth, n_predicted = iou.shape

    def true_positives(threshold, at_or_above=False):
        used_rows, used_columns, tp = set(), set(), 0
        for flat in np.argsort(-iou, axis=None):
            row, column = divmod(int(flat), n_predicted)
            hit = iou[row, column] >= threshold if at_or_above else iou[row, column] > threshold
            if hit and row not in used_rows and column not in used_columns:
                used_rows.add(row), used_columns.add(column)
                tp += 1
        return tp

    def ratio(numerator, denominator):
        return numerator / denominator if denominator else float(n_truth == n_predicted == 0)

    dsb = [ratio(tp, n_truth + n_predicted - tp) for tp in map(true_positives, DSB_THRESHOLDS)]
    paper = [ratio(true_positives(t, at_or_above=True), n_predicted) for t in PAPER_THRESHOLDS]
    matched = [iou[r, c] for r in range(n_truth) for c in range(n_predicted) if iou[r, c] > 0.5]
    return np.mean(dsb), np.mean(paper), true_positives(0.5), matched


@pytest.mark.parametrize("seed", range(6))
def test_instance_scores_agree_with_a_slow_per_object_reference(seed):
    truth, prediction = random_label_pair(seed)
    scores = instance_scores(truth, prediction)
    dsb, paper, tp, matched = slow_instance_scores(truth, prediction)
    assert scores.dsb_map == pytest.approx(dsb, abs=1e-12)
    assert scores.paper_map == pytest.approx(paper, abs=1e-12)
    assert scores.tp50 == tp
    np.testing.assert_allclose(scores.matched_ious, sorted(matched))
    iou, truth_ids, predicted_ids = iou_matrix(truth, prediction)
    np.testing.assert_allclose(iou, slow_iou_matrix(truth, prediction))
    np.testing.assert_array_equal(truth_ids, np.unique(truth)[1:])
    np.testing.assert_array_equal(predicted_ids, np.unique(prediction)[1:])


def test_contingency_counts_every_pixel_once():
    truth, prediction = random_label_pair(9)
    table = contingency(truth, prediction)
    assert table.counts.sum() == truth.size
    assert table.truth_areas.sum() == table.predicted_areas.sum() == truth.size
    assert table.truth_areas[0] == np.count_nonzero(truth == 0)


def test_summaries_average_maps_and_sum_counts():
    truth, prediction = acceptance_pair()
    perfect = instance_scores(truth, truth)
    flawed = instance_scores(truth, prediction)
    summary = summarize_instance_scores([perfect, flawed])
    assert summary.dsb_map == pytest.approx((1.0 + 0.32) / 2)
    assert summary.ap50 == pytest.approx((1.0 + 0.5) / 2)
    assert (summary.tp50, summary.fp50, summary.fn50) == (5, 1, 1)
    assert summary.precision50 == pytest.approx(5 / 6)
    assert summary.mean_matched_iou == pytest.approx((4 + 16 / 24) / 5)
    assert summary.per_image == (perfect, flawed)
    assert InstanceScores.from_matches(np.array([0.9]), 1, 1).dsb_map == pytest.approx(0.8)
    with pytest.raises(MetricInputError):
        summarize_instance_scores([])


def test_instance_inputs_are_checked():
    labels = np.zeros((4, 4), np.int32)
    with pytest.raises(MetricInputError, match="integer label image"):
        instance_scores(labels, labels.astype(np.float32))
    with pytest.raises(MetricInputError, match="negative"):
        instance_scores(labels - 1, labels)
    with pytest.raises(MetricInputError, match="differ in shape"):
        instance_scores(labels, labels[:3])


# --------------------------------------------------------------------------------------
# V_Rand and V_Info
# --------------------------------------------------------------------------------------


def expand_background_to_singletons(truth, prediction):
    """Give every predicted-background pixel inside the truth foreground an id of its own."""
    expanded = prediction.astype(np.int64).copy()
    unassigned = (prediction == 0) & (truth != 0)
    expanded[unassigned] = expanded.max() + 1 + np.arange(np.count_nonzero(unassigned))
    return expanded


def slow_foreground_restricted(truth, prediction):
    """V_Rand and V_Info from ordered pixel pairs and explicit probability tables."""
    inside = np.flatnonzero(truth.ravel() != 0)
    t = truth.ravel()[inside]
    s = expand_background_to_singletons(truth, prediction).ravel()[inside]
    same_truth = t[:, None] == t[None, :]
    same_prediction = s[:, None] == s[None, :]
    joint, truth_pairs, predicted_pairs = (same_truth & same_prediction).sum(), same_truth.sum(), same_prediction.sum()
    v_rand = 2 * joint / (truth_pairs + predicted_pairs)

    def entropy(keys):
        _, counts = np.unique(keys, axis=0, return_counts=True)
        p = counts / counts.sum()
        return -(p * np.log2(p)).sum()

    h_t, h_s, h_ts = entropy(t), entropy(s), entropy(np.column_stack([t, s]))
    mutual = h_t + h_s - h_ts
    return v_rand, joint / truth_pairs, joint / predicted_pairs, 2 * mutual / (h_t + h_s)


@pytest.mark.parametrize("seed", range(4))
def test_foreground_restricted_scores_agree_with_a_pair_counting_reference(seed):
    truth, prediction = random_label_pair(seed, shape=(24, 24), n_objects=6)
    prediction[::5, :] = 0  # unassigned "boundary" pixels inside truth objects
    scores = foreground_restricted_scores(truth, prediction)
    v_rand, split, merge, v_info = slow_foreground_restricted(truth, prediction)
    assert scores.v_rand == pytest.approx(v_rand, abs=1e-12)
    assert scores.v_rand_split == pytest.approx(split, abs=1e-12)
    assert scores.v_rand_merge == pytest.approx(merge, abs=1e-12)
    assert scores.v_info == pytest.approx(v_info, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_v_rand_matches_scikit_image_adapted_rand_error(seed):
    truth, prediction = random_label_pair(seed)
    prediction[::4, :] = 0
    # scikit-image counts pixel pairs and treats predicted background as one segment.
    error, _, _ = adapted_rand_error(truth, prediction)
    scores = foreground_restricted_scores(truth, prediction, background_as_singletons=False, count_pairs=True)
    assert scores.v_rand == pytest.approx(1 - error, abs=1e-12)
    # With the challenge's singletons made explicit, scikit-image agrees with that convention too.
    error, _, _ = adapted_rand_error(truth, expand_background_to_singletons(truth, prediction))
    assert foreground_restricted_scores(truth, prediction, count_pairs=True).v_rand == pytest.approx(1 - error, abs=1e-12)
    # The challenge's n^2 counting differs from pair counting only by O(1 / object size).
    assert foreground_restricted_scores(truth, prediction).v_rand == pytest.approx(1 - error, abs=0.05)


@pytest.mark.parametrize("seed", range(4))
def test_v_info_matches_scikit_image_variation_of_information(seed):
    truth, prediction = random_label_pair(seed)
    prediction[::4, :] = 0
    scores = foreground_restricted_scores(truth, prediction)
    splits, merges = variation_of_information(
        truth, expand_background_to_singletons(truth, prediction), ignore_labels=(0,)
    )
    assert scores.entropy_prediction - scores.mutual_information == pytest.approx(splits, abs=1e-9)  # H(S|T)
    assert scores.entropy_truth - scores.mutual_information == pytest.approx(merges, abs=1e-9)  # H(T|S)


def test_foreground_restricted_hand_cases():
    truth = np.zeros((10, 20), np.int32)
    truth[:, :10], truth[:, 10:] = 5, 9
    perfect = foreground_restricted_scores(truth, truth * 7 + 1)
    assert (perfect.v_rand, perfect.v_info, perfect.v_rand_split, perfect.v_info_merge) == (1.0, 1.0, 1.0, 1.0)
    merged = foreground_restricted_scores(truth, np.ones_like(truth))
    # sum p^2 = 2 (1/2)^2 = 1/2, sum t^2 = 1/2, sum s^2 = 1: V_Rand = 1/2 / (1/4 + 1/2) = 2/3.
    assert (merged.v_rand_split, merged.v_rand_merge) == pytest.approx((1.0, 0.5))
    assert merged.v_rand == pytest.approx(2 / 3)
    # One predicted segment carries no information: I = 0, H(T) = 1 bit.
    assert (merged.v_info, merged.v_info_split, merged.v_info_merge) == pytest.approx((0.0, 1.0, 0.0))
    assert merged.entropy_truth == pytest.approx(1.0)
    one_object = np.ones((10, 20), np.int32)
    split = foreground_restricted_scores(one_object, truth)
    assert (split.v_rand_split, split.v_rand_merge, split.v_rand) == pytest.approx((0.5, 1.0, 2 / 3))
    assert (split.v_info, split.v_info_split, split.v_info_merge) == pytest.approx((0.0, 0.0, 1.0))
    # Both a single segment: identical partitions.
    assert foreground_restricted_scores(one_object, one_object * 3).v_info == 1.0


def test_predicted_background_inside_truth_counts_as_singletons():
    truth = np.ones((4, 5), np.int32)  # one object of 20 pixels
    unassigned = foreground_restricted_scores(truth, np.zeros_like(truth))
    # 20 singletons: sum p^2 = sum s^2 = 20 / 400, sum t^2 = 1.
    assert unassigned.v_rand_merge == 1.0
    assert unassigned.v_rand_split == pytest.approx(20 / 400)
    assert unassigned.v_rand == pytest.approx(2 * 20 / (400 + 20))
    as_segment = foreground_restricted_scores(truth, np.zeros_like(truth), background_as_singletons=False)
    assert as_segment.v_rand == 1.0
    # Truth background is ignored: a false object there changes nothing.
    truth[0] = 0
    prediction = np.ones_like(truth)
    prediction[0] = 2
    assert foreground_restricted_scores(truth, prediction).v_rand == 1.0


def test_foreground_restricted_without_truth_foreground_is_nan():
    empty = np.zeros((5, 5), np.int32)
    scores = foreground_restricted_scores(empty, empty + 1)
    assert math.isnan(scores.v_rand) and math.isnan(scores.v_info) and scores.n_pixels == 0


def test_label_set_scores_pool_pixels_and_average_images():
    truth, prediction = acceptance_pair()
    per_image = [score_label_image(truth, prediction), score_label_image(truth, truth)]
    summary = summarize_label_scores(per_image)
    assert summary.pixels == per_image[0].pixels + per_image[1].pixels
    assert summary.instances.dsb_map == pytest.approx(0.66)
    assert summary.v_rand == pytest.approx((per_image[0].foreground_restricted.v_rand + 1.0) / 2)
    named = summary.named()
    assert named[METRIC_NAMES["dsb_map"]] == pytest.approx(0.66)
    assert named[METRIC_NAMES["tp50"]] == 5
