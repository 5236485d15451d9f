"""Segmentation metrics: pixel scores, ROC / precision-recall curves, instance matching
scores (DSB 2018 mAP and the paper's variant) and the ISBI 2012 V_Rand / V_Info scores.

Every metric has one display name in :data:`METRIC_NAMES`; the app, the CLI and the
reports show that name and nothing else, so a number can always be traced to its formula.

Inputs
------
- label images: integer arrays of any integer dtype, 0 = background, object ids need not
  be contiguous (``{0, 7, 9}`` is fine); any number of dimensions, same shape on both sides;
- masks: bool arrays (integer arrays are read as ``!= 0``);
- probabilities: float arrays in [0, 1] (float32 from the network).

Conventions for empty cases (stated again in each docstring)
------------------------------------------------------------
A ratio whose denominator is 0 is 1.0 when the prediction made no error (nothing to
find and nothing found: both empty) and 0.0 otherwise. So pixel F1 with an empty
truth and an empty prediction is 1.0, DSB mAP of an image with no objects and no
predicted objects is 1.0, and an empty prediction against a non-empty truth scores 0.0.
Scores that are undefined rather than perfect (ROC-AUC with a single class, mean matched
IoU without any match, V_Rand / V_Info without truth foreground) are ``nan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from core.errors import MetricInputError



#: Short key -> the exact display name used wherever the metric is shown.
METRIC_NAMES: dict[str, str] = {
    # Instance metrics (one object = one label id).
    "dsb_map": "DSB mAP, IoU 0.50 to 0.95, TP/(TP+FP+FN)",
    "paper_map": "Paper mAP, eq. (4)-(5), IoU 0.50 to 1.00, TP/(TP+FP)",
    "ap50": "AP@0.5, TP/(TP+FP+FN)",
    "precision50": "Object precision at IoU > 0.5, TP/(TP+FP)",
    "recall50": "Object recall at IoU > 0.5, TP/(TP+FN)",
    "f1_50": "Object F1 at IoU > 0.5, 2TP/(2TP+FP+FN)",
    "tp50": "TP objects at IoU > 0.5",
    "fp50": "FP objects at IoU > 0.5",
    "fn50": "FN objects at IoU > 0.5",
    "mean_matched_iou": "Mean IoU of matched objects (IoU > 0.5)",
    # Pixel metrics for the positive class at a probability threshold.
    "pixel_precision": "Pixel precision at threshold 0.5",
    "pixel_recall": "Pixel recall at threshold 0.5",
    "pixel_f1": "Pixel F1 (Dice) at threshold 0.5",
    "pixel_iou": "Pixel IoU (Jaccard) at threshold 0.5",
    "pixel_accuracy": "Pixel accuracy at threshold 0.5",
    "pixel_f1_negative": "Pixel F1 of the negative class at threshold 0.5",
    "pixel_f1_all_positive": "Pixel F1 of the all-positive predictor (baseline)",
    "pixel_tp": "Pixel TP at threshold 0.5",
    "pixel_fp": "Pixel FP at threshold 0.5",
    "pixel_fn": "Pixel FN at threshold 0.5",
    "pixel_tn": "Pixel TN at threshold 0.5",
    # Threshold-free pixel metrics from probability histograms.
    "roc_auc": "ROC-AUC (pixels)",
    "average_precision": "Average precision (pixels)",
    # ISBI 2012 challenge scores of the segmented cells.
    "v_rand": "V_Rand (foreground-restricted)",
    "v_rand_split": "V_Rand split (foreground-restricted)",
    "v_rand_merge": "V_Rand merge (foreground-restricted)",
    "v_info": "V_Info (foreground-restricted)",
    "v_info_split": "V_Info split (foreground-restricted)",
    "v_info_merge": "V_Info merge (foreground-restricted)",
}

#: IoU thresholds of the DSB 2018 score, built from integers so that 0.55 == 0.55 exactly.
DSB_THRESHOLDS: np.ndarray = np.round(0.50 + 0.05 * np.arange(10), 2)
#: The paper's 11 thresholds 0.50, 0.55, ..., 1.00 (eq. (4)-(5)).
PAPER_THRESHOLDS: np.ndarray = np.round(0.50 + 0.05 * np.arange(11), 2)


def metric_name(key: str, threshold: float = 0.5) -> str:
    """Display name of metric ``key``; pixel metrics carry the threshold they were computed at.

    >>> metric_name("pixel_f1", 0.3)
    'Pixel F1 (Dice) at threshold 0.3'
    """
    if key not in METRIC_NAMES:
        raise MetricInputError(f"unknown metric key {key!r}; known keys: {', '.join(METRIC_NAMES)}")
    name = METRIC_NAMES[key]
    if key.startswith("pixel_") and "at threshold 0.5" in name:
        name = name.replace("at threshold 0.5", f"at threshold {threshold:g}")
    return name


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _as_label_image(labels: np.ndarray, what: str) -> np.ndarray:
    """``labels`` as an integer array with ids >= 0 (bool masks become 0/1)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise MetricInputError(
            f"{what} must be an integer label image, got dtype {labels.dtype} "
            "(post-process probabilities into labels first)"
        )
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise MetricInputError(f"{what} has negative label ids (min {labels.min()}); ids must be >= 0")
    return labels


def _as_mask(mask: np.ndarray, what: str) -> np.ndarray:
    """``mask`` as a bool array; integer arrays are read as ``!= 0``, floats are refused."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        return mask != 0
    raise MetricInputError(f"{what} must be a bool or integer mask, got dtype {mask.dtype}")


def _as_probabilities(probabilities: np.ndarray, what: str = "probabilities") -> np.ndarray:
    """``probabilities`` as float32 in [0, 1]; refuses NaN and values outside the range."""
    probabilities = np.asarray(probabilities)
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise MetricInputError(f"{what} must be a float array in [0, 1], got dtype {probabilities.dtype}")
    probabilities = probabilities.astype(np.float32, copy=False)
    if probabilities.size:
        low, high = probabilities.min(), probabilities.max()  # NaN propagates into both
        if not (low >= 0.0 and high <= 1.0):
            raise MetricInputError(f"{what} must lie in [0, 1] without NaN, found range [{low}, {high}]")
    return probabilities


def _check_same_shape(first: np.ndarray, second: np.ndarray, names: str) -> None:
    if first.shape != second.shape:
        raise MetricInputError(f"{names} differ in shape: {first.shape} vs {second.shape}")


def _ratio(numerator, denominator, no_error):
    """numerator / denominator, where 0/0 is 1.0 if ``no_error`` else 0.0 (works on arrays)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    safe = np.where(denominator > 0, denominator, 1.0)
    result = np.where(denominator > 0, numerator / safe, np.where(no_error, 1.0, 0.0))
    return float(result) if result.ndim == 0 else result


# --------------------------------------------------------------------------------------
# Pixel scores at a threshold
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelCounts:
    """Confusion counts of one positive class over pixels; add them to score a set (micro average).

    Attributes
    ----------
    tp, fp, fn, tn : int
        True/false positive/negative pixel counts (Python ints, so sums never overflow).

    Notes
    -----
    Rates follow the module's convention: a 0/0 ratio is 1.0 when the prediction made no
    error on the class (``fp == fn == 0``, e.g. both truth and prediction empty), else 0.0.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        if not isinstance(other, PixelCounts):
            return NotImplemented
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def __radd__(self, other):
        # sum() starts from 0.
        return self if other == 0 else self.__add__(other)

    @property
    def n_pixels(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def n_positive(self) -> int:
        """Pixels of the positive class in the truth."""
        return self.tp + self.fn

    @property
    def prevalence(self) -> float:
        """Fraction of truth pixels in the positive class, n_positive / n_pixels (``nan`` without pixels)."""
        return self.n_positive / self.n_pixels if self.n_pixels else math.nan

    @property
    def _no_error(self) -> bool:
        return self.fp == 0 and self.fn == 0

    @property
    def precision(self) -> float:
        """TP / (TP + FP)."""
        return _ratio(self.tp, self.tp + self.fp, self._no_error)

    @property
    def recall(self) -> float:
        """TP / (TP + FN)."""
        return _ratio(self.tp, self.tp + self.fn, self._no_error)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN), equal to the Dice coefficient."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, self._no_error)

    dice = f1

    @property
    def iou(self) -> float:
        """TP / (TP + FP + FN), the Jaccard index."""
        return _ratio(self.tp, self.tp + self.fp + self.fn, self._no_error)

    @property
    def accuracy(self) -> float:
        """(TP + TN) / all pixels."""
        return _ratio(self.tp + self.tn, self.n_pixels, self._no_error)

    @property
    def negative_f1(self) -> float:
        """F1 of the negative class, 2 TN / (2 TN + FP + FN) (membrane F1 when interior is positive)."""
        return _ratio(2 * self.tn, 2 * self.tn + self.fp + self.fn, self._no_error)

    def all_positive_baseline(self) -> PixelCounts:
        """Counts of the trivial predictor that calls every pixel positive, on the same truth.

        Its F1 is 2 p / (1 + p) for prevalence p: 0.876 on ISBI 2012 (p = 0.78), which is
        why a pixel F1 alone says little there.
        """
        n_negative = self.fp + self.tn
        return PixelCounts(tp=self.n_positive, fp=n_negative, fn=0, tn=0)

    def named(self, threshold: float = 0.5) -> dict[str, float | int]:
        """Every pixel score under its display name (see :func:`metric_name`)."""
        values = {
            "pixel_precision": self.precision,
            "pixel_recall": self.recall,
            "pixel_f1": self.f1,
            "pixel_iou": self.iou,
            "pixel_accuracy": self.accuracy,
            "pixel_f1_negative": self.negative_f1,
            "pixel_f1_all_positive": self.all_positive_baseline().f1,
            "pixel_tp": self.tp,
            "pixel_fp": self.fp,
            "pixel_fn": self.fn,
            "pixel_tn": self.tn,
        }
        return {metric_name(key, threshold): value for key, value in values.items()}


def pixel_counts(prediction: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> PixelCounts:
    """Count TP/FP/FN/TN pixels of the positive class.

    Parameters
    ----------
    prediction : ndarray of bool, or of float in [0, 1]
        A mask, or probabilities called positive where ``probability >= threshold``
        (the convention of scikit-learn's curves).
    truth : ndarray of bool (or int, read as ``!= 0``), same shape
    threshold : float
        Only used for float predictions.

    Returns
    -------
    PixelCounts
    """
    truth = _as_mask(truth, "truth")
    prediction = np.asarray(prediction)
    if prediction.dtype != bool:
        if np.issubdtype(prediction.dtype, np.floating):
            prediction = _as_probabilities(prediction, "prediction") >= threshold
        else:
            prediction = _as_mask(prediction, "prediction")
    _check_same_shape(prediction, truth, "prediction and truth")
    n_predicted = int(np.count_nonzero(prediction))
    n_true = int(np.count_nonzero(truth))
    tp = int(np.count_nonzero(prediction & truth))
    fp, fn = n_predicted - tp, n_true - tp
    return PixelCounts(tp=tp, fp=fp, fn=fn, tn=int(truth.size) - tp - fp - fn)


# --------------------------------------------------------------------------------------
# ROC and precision-recall curves from probability histograms
# --------------------------------------------------------------------------------------

# Bins are spaced uniformly in log(p) below 0.5 and in log(1 - p) above 0.5, using the
# float32 exponent and the top mantissa bits. Uniform bins would lump together the
# saturated outputs of a trained network (0.9999 and 0.999999), where most pixels lie,
# and the ties would bias ROC-AUC by more than 1e-3; here every float32 value near 0 or 1
# keeps its own bin and mid-range bins are 2.4e-4 wide (relative), in 5 MB of counts.
_KEPT_MANTISSA_BITS = 12
_SHIFT = 23 - _KEPT_MANTISSA_BITS
_LOW_CODE = int(np.float32(2.0**-40).view(np.int32)) >> _SHIFT  # closer to 0 or 1 than this: end bins
_HALF_CODE = int(np.float32(0.5).view(np.int32)) >> _SHIFT
_N_HALF = _HALF_CODE - _LOW_CODE + 1
N_PROBABILITY_BINS = 2 * _N_HALF - 1
_CHUNK = 1 << 22  # pixels binned at a time, so memory stays bounded for any image size


def probability_bin(probabilities: np.ndarray) -> np.ndarray:
    """Histogram bin of each probability; bins increase with probability.

    Parameters
    ----------
    probabilities : ndarray of float32 in [0, 1]

    Returns
    -------
    ndarray of int32, same shape, values in ``[0, N_PROBABILITY_BINS)``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    flat = probabilities.reshape(-1)
    upper = flat > 0.5
    # 1 - p is exact in float32 for p in [0.5, 1] (Sterbenz lemma), so no information is lost.
    distance_to_end = np.where(upper, np.float32(1.0) - flat, flat)
    code = distance_to_end.view(np.int32) >> _SHIFT  # monotone in the value for floats >= 0
    np.clip(code, _LOW_CODE, _HALF_CODE, out=code)
    code -= _LOW_CODE
    bins = np.where(upper, 2 * _N_HALF - 2 - code, code).astype(np.int32, copy=False)
    return bins.reshape(probabilities.shape)


def _bin_lower_edges() -> np.ndarray:
    """Smallest probability falling in each bin (float64, ``(N_PROBABILITY_BINS,)``)."""
    lower_codes = (np.arange(_N_HALF, dtype=np.int64) + _LOW_CODE) << _SHIFT
    lower = lower_codes.astype(np.int32).view(np.float32).astype(np.float64)
    lower[0] = 0.0
    # Upper bin b holds distances to 1 in [edge(c), edge(c + 1)) with c = 2 N_HALF - 2 - b.
    distance_codes = ((np.arange(_N_HALF - 1, dtype=np.int64) + _LOW_CODE + 1) << _SHIFT).astype(np.int32)
    upper = 1.0 - distance_codes.view(np.float32).astype(np.float64)
    return np.concatenate([lower, upper[::-1]])


@dataclass(frozen=True)
class PixelCurves:
    """ROC and precision-recall curves over a set of pixels, with their areas.

    Attributes
    ----------
    fpr, tpr, precision, recall, thresholds : ndarray of float64, shape (n_points,)
        Curve points for descending thresholds, downsampled for plotting (at most about
        ``max_points``). Point 0 is the origin at threshold ``inf`` (nothing positive;
        precision set to 1 there as scikit-learn does); the last point calls every
        pixel positive. ``thresholds`` are the lower edges of the histogram bins.
    roc_auc : float
        Trapezoidal area under the full ROC curve; ``nan`` when only one class is present.
    average_precision : float
        sum_n (R_n - R_{n-1}) P_n over the full curve, as scikit-learn defines it (a step
        sum, not a trapezoid); ``nan`` without positive pixels.
    n_positive, n_negative : int
        Pixel counts of each class.

    Save with ``np.savez(path, **curves.to_dict())`` and load with
    ``PixelCurves.from_dict(np.load(path))``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    roc_auc: float
    average_precision: float
    n_positive: int
    n_negative: int

    _ARRAYS = ("fpr", "tpr", "precision", "recall", "thresholds")

    def to_dict(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array (scalars 0-d), ready for ``np.savez``."""
        arrays = {name: np.asarray(getattr(self, name), dtype=np.float64) for name in self._ARRAYS}
        arrays["roc_auc"] = np.asarray(self.roc_auc, dtype=np.float64)
        arrays["average_precision"] = np.asarray(self.average_precision, dtype=np.float64)
        arrays["n_positive"] = np.asarray(self.n_positive, dtype=np.int64)
        arrays["n_negative"] = np.asarray(self.n_negative, dtype=np.int64)
        return arrays

    @classmethod
    def from_dict(cls, arrays: Mapping[str, np.ndarray]) -> PixelCurves:
        """Inverse of :meth:`to_dict`; accepts the mapping ``np.load`` returns for an ``.npz``."""
        expected = (*cls._ARRAYS, "roc_auc", "average_precision", "n_positive", "n_negative")
        missing = [name for name in expected if name not in arrays]
        if missing:
            raise MetricInputError(f"stored curves lack {', '.join(missing)}")
        return cls(
            **{name: np.asarray(arrays[name], dtype=np.float64) for name in cls._ARRAYS},
            roc_auc=float(arrays["roc_auc"]),
            average_precision=float(arrays["average_precision"]),
            n_positive=int(arrays["n_positive"]),
            n_negative=int(arrays["n_negative"]),
        )


class PixelCurveAccumulator:
    """Accumulate probability histograms per class, image by image, then compute curves.

    Linear time in the number of pixels and constant memory (two histograms of
    ``N_PROBABILITY_BINS`` int64 counts, about 5 MB), so a validation set of tens of
    millions of pixels is scored without keeping its pixels. Agrees with scikit-learn's
    ``roc_auc_score`` / ``average_precision_score`` to well within 1e-3 (ties are created
    only between probabilities within a relative 2.4e-4 of each other).

    Examples
    --------
    >>> accumulator = PixelCurveAccumulator()
    >>> for probabilities, truth in validation_pairs:   # doctest: +SKIP
    ...     accumulator.update(probabilities, truth)
    >>> curves = accumulator.result()                   # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._counts = np.zeros((N_PROBABILITY_BINS, 2), dtype=np.int64)  # columns: negative, positive

    def update(self, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """Add one image (or any batch) of pixels.

        Parameters
        ----------
        probabilities : ndarray of float in [0, 1], any shape (cast to float32)
        truth : ndarray of bool (or int, read as ``!= 0``), same shape
        """
        probabilities = _as_probabilities(probabilities)
        truth = _as_mask(truth, "truth")
        _check_same_shape(probabilities, truth, "probabilities and truth")
        flat_probabilities, flat_truth = probabilities.reshape(-1), truth.reshape(-1)
        for start in range(0, flat_probabilities.size, _CHUNK):
            bins = probability_bin(flat_probabilities[start : start + _CHUNK])
            keys = 2 * bins + flat_truth[start : start + _CHUNK]
            self._counts += np.bincount(keys, minlength=2 * N_PROBABILITY_BINS).reshape(-1, 2)

    def result(self, max_points: int = 1000) -> PixelCurves:
        """ROC and precision-recall curves of everything added so far.

        Parameters
        ----------
        max_points : int
            Upper bound on stored curve points (areas always use the full curves).
        """
        n_negative, n_positive = (int(total) for total in self._counts.sum(axis=0))
        if n_negative + n_positive == 0:
            raise MetricInputError("no pixels were added to the curve accumulator")
        occupied = np.flatnonzero(self._counts.sum(axis=1))[::-1]  # descending thresholds
        true_positives = np.concatenate([[0], np.cumsum(self._counts[occupied, 1])])
        false_positives = np.concatenate([[0], np.cumsum(self._counts[occupied, 0])])
        thresholds = np.concatenate([[np.inf], _bin_lower_edges()[occupied]])

        tpr = true_positives / max(n_positive, 1)
        fpr = false_positives / max(n_negative, 1)
        predicted = true_positives + false_positives
        precision = np.where(predicted > 0, true_positives / np.maximum(predicted, 1), 1.0)
        roc_auc = float(np.trapezoid(tpr, fpr)) if n_positive and n_negative else math.nan
        average_precision = float(np.sum(np.diff(tpr) * precision[1:])) if n_positive else math.nan

        keep = _curve_points_to_keep(fpr, tpr, precision, max_points)
        return PixelCurves(
            fpr=fpr[keep],
            tpr=tpr[keep],
            precision=precision[keep],
            recall=tpr[keep].copy(),
            thresholds=thresholds[keep],
            roc_auc=roc_auc,
            average_precision=average_precision,
            n_positive=n_positive,
            n_negative=n_negative,
        )


def _curve_points_to_keep(fpr, tpr, precision, max_points: int) -> np.ndarray:
    """Indices of points evenly spaced along the length of both curves, ends included."""
    n_points = fpr.size
    if n_points <= max_points:
        return np.arange(n_points)
    kept = [np.array([0, n_points - 1])]
    per_curve = max(max_points // 2 - 1, 1)
    # Recall equals tpr, so the PR curve lives in (tpr, precision).
    for x, y in ((fpr, tpr), (tpr, precision)):
        length = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(y)))])
        targets = np.linspace(0.0, length[-1], per_curve)
        kept.append(np.minimum(np.searchsorted(length, targets), n_points - 1))
    return np.unique(np.concatenate(kept))


# --------------------------------------------------------------------------------------
# Contingency table of two label images (one pass over the pixels)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contingency:
    """Sparse overlap table of a truth and a predicted label image.

    Index 0 on both sides is the background (id 0), present or not; indices 1..n map to
    the sorted object ids, so ``truth_ids[k - 1]`` is the original id of truth index k.

    Attributes
    ----------
    truth_ids, predicted_ids : ndarray, shapes (n_truth,), (n_predicted,)
        Original object ids (background excluded), sorted.
    truth_areas, predicted_areas : ndarray of int64, shapes (n_truth + 1,), (n_predicted + 1,)
        Pixels per index, background first.
    rows, columns, counts : ndarray of int64, shape (n_pairs,)
        Every (truth index, predicted index) pair that shares pixels, with its pixel count.
    """

    truth_ids: np.ndarray
    predicted_ids: np.ndarray
    truth_areas: np.ndarray
    predicted_areas: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    counts: np.ndarray


def _compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel to 0..n keeping 0 as background; returns (relabelled flat int array, ids)."""
    flat = labels.reshape(-1)
    largest = int(flat.max()) if flat.size else 0
    if largest <= 4 * flat.size + 65536:
        flat = flat.astype(np.intp, copy=False)  # np.bincount refuses uint64
        # A lookup table is far faster than sorting (np.unique) for the usual id ranges.
        present = np.bincount(flat, minlength=largest + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        if ids.size == largest:  # already 0..n, as post-processing outputs
            return flat, ids
        lookup = np.zeros(largest + 1, dtype=np.intp)
        lookup[ids] = np.arange(1, ids.size + 1)
        return lookup[flat], ids
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] == 0:
        return inverse.astype(np.int64), ids[1:]
    return inverse.astype(np.int64) + 1, ids


def contingency(truth_labels: np.ndarray, predicted_labels: np.ndarray) -> Contingency:
    """Overlap counts of every truth object with every predicted object, background included.

    One pass over the pixels: ids are compacted to 0..n, then each pixel gets the code
    ``truth_index * (n_predicted + 1) + predicted_index`` and the codes are counted
    (``np.bincount`` when the table is small enough to be dense, else a sort).

    Parameters
    ----------
    truth_labels, predicted_labels : ndarray of int, same shape
    """
    truth_labels = _as_label_image(truth_labels, "truth labels")
    predicted_labels = _as_label_image(predicted_labels, "predicted labels")
    _check_same_shape(truth_labels, predicted_labels, "truth and predicted label images")
    truth_index, truth_ids = _compact_ids(truth_labels)
    predicted_index, predicted_ids = _compact_ids(predicted_labels)
    width = predicted_ids.size + 1
    n_cells = (truth_ids.size + 1) * width
    codes = truth_index * width + predicted_index
    if n_cells <= max(4 * codes.size, 1 << 20):
        table = np.bincount(codes, minlength=n_cells)
        nonzero = np.flatnonzero(table)
        pair_codes, pair_counts = nonzero, table[nonzero]
    else:
        pair_codes, pair_counts = np.unique(codes, return_counts=True)
    rows, columns = (pair_codes // width).astype(np.int64), (pair_codes % width).astype(np.int64)
    counts = pair_counts.astype(np.int64)
    return Contingency(
        truth_ids=truth_ids,
        predicted_ids=predicted_ids,
        # Areas from the few pairs rather than from another pass over the pixels.
        truth_areas=np.bincount(rows, weights=counts, minlength=truth_ids.size + 1).astype(np.int64),
        predicted_areas=np.bincount(columns, weights=counts, minlength=width).astype(np.int64),
        rows=rows,
        columns=columns,
        counts=counts,
    )


def iou_matrix(truth_labels: np.ndarray, predicted_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense IoU of every truth object with every predicted object.

    Parameters
    ----------
    truth_labels, predicted_labels : ndarray of int, same shape

    Returns
    -------
    iou : ndarray of float64, shape (n_truth, n_predicted)
        |T_i ∩ P_j| / |T_i ∪ P_j|.
    truth_ids, predicted_ids : ndarray
        The object ids of the rows and columns.
    """
    table = contingency(truth_labels, predicted_labels)
    iou = np.zeros((table.truth_ids.size, table.predicted_ids.size))
    objects = (table.rows > 0) & (table.columns > 0)
    rows, columns, overlap = table.rows[objects], table.columns[objects], table.counts[objects]
    union = table.truth_areas[rows] + table.predicted_areas[columns] - overlap
    iou[rows - 1, columns - 1] = overlap / union
    return iou, table.truth_ids, table.predicted_ids


# --------------------------------------------------------------------------------------
# Instance metrics
# --------------------------------------------------------------------------------------


def _matched_ious(table: Contingency) -> np.ndarray:
    """IoU of the matched pairs at IoU > 0.5, sorted ascending.

    Above 0.5 matching is unique: a pair with IoU > 0.5 covers more than half of each of
    its objects, so no object can be in two such pairs and no assignment step is needed.
    """
    objects = (table.rows > 0) & (table.columns > 0)
    rows, columns, overlap = table.rows[objects], table.columns[objects], table.counts[objects]
    # Exact integer test of IoU > 0.5: 2 * overlap > union.
    union = table.truth_areas[rows] + table.predicted_areas[columns] - overlap
    matched = 2 * overlap > union
    return np.sort(overlap[matched] / union[matched])


def _half_matches(table: Contingency) -> int:
    """One-to-one matches at IoU exactly 0.5 (``2 * overlap == union``, an exact integer test).

    They count for the paper's IoU >= 0.50 term only. A pair at IoU exactly 0.5 involves an
    object that is exactly half of the other and inside it, so an object has at most two such
    pairs, its two partners have no other, and no object in such a pair has a pair above 0.5:
    the pairs form single edges and two-edge stars, each giving one match. So the maximum
    one-to-one matching is the number of pairs minus the objects that sit in two of them.
    """
    objects = (table.rows > 0) & (table.columns > 0)
    rows, columns, overlap = table.rows[objects], table.columns[objects], table.counts[objects]
    union = table.truth_areas[rows] + table.predicted_areas[columns] - overlap
    half = 2 * overlap == union
    if not half.any():
        return 0
    shared = int((np.bincount(rows[half]) == 2).sum() + (np.bincount(columns[half]) == 2).sum())
    return int(half.sum()) - shared


def _true_positives_at(matched_ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Matches with IoU strictly greater than each threshold (thresholds >= 0.5)."""
    return matched_ious.size - np.searchsorted(matched_ious, thresholds, side="right")


def _true_positives_at_or_above(matched_ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Matches (IoU > 0.5) with IoU greater than or equal to each threshold (thresholds > 0.5,
    or 0.5 with the exact-0.5 matches added by the caller).

    IoU ``a / b`` and a threshold ``r`` (two decimals) are both correctly rounded doubles, so
    an IoU exactly equal to ``r`` compares equal, and one that differs from it differs by at
    least ``1 / (100 b)``, far beyond rounding: the float comparison is exact.
    """
    return matched_ious.size - np.searchsorted(matched_ious, thresholds, side="left")


@dataclass(frozen=True)
class InstanceScores:
    """Instance matching scores of one image.

    DSB 2018 and AP@0.5 count a match at IoU strictly above the threshold (the Kaggle rule);
    the paper's eq. (4)-(5) counts a match at IoU greater than or equal to each threshold.

    Attributes
    ----------
    n_truth, n_predicted : int
        Objects in the truth and in the prediction.
    matched_ious : ndarray of float64
        IoU of each matched pair at IoU > 0.5, sorted; every score below derives from it
        (the paper's 0.50 term adds the matches at IoU exactly 0.5, ``half_matches``).
    dsb_per_threshold : ndarray of float64, shape (10,)
        TP/(TP+FP+FN) at each of :data:`DSB_THRESHOLDS`.
    dsb_map : float
        DSB 2018 score, the mean of ``dsb_per_threshold``.
    paper_per_threshold : ndarray of float64, shape (11,)
        TP/(TP+FP) at each of :data:`PAPER_THRESHOLDS` (the paper's eq. (4)), a match
        counted at IoU >= r: the r = 1.00 term counts the pixel-perfect matches.
    paper_map : float
        The paper's eq. (5), the mean of ``paper_per_threshold``; a perfect prediction
        scores 1.0.
    half_matches : int
        One-to-one matches at IoU exactly 0.5 (counted by the paper's r = 0.50 term only).
    tp50, fp50, fn50 : int
        Matched, unmatched predicted and unmatched truth objects at IoU > 0.5.
    ap50, precision50, recall50, f1_50 : float
        TP/(TP+FP+FN), TP/(TP+FP), TP/(TP+FN), 2TP/(2TP+FP+FN) at IoU > 0.5.
    mean_matched_iou : float
        Mean IoU of the matches at IoU > 0.5; ``nan`` without any match.

    Notes
    -----
    Empty cases: both empty -> every ratio is 1.0; empty prediction with objects in the
    truth, or predicted objects with an empty truth -> 0.0.
    """

    n_truth: int
    n_predicted: int
    matched_ious: np.ndarray
    dsb_per_threshold: np.ndarray
    dsb_map: float
    paper_per_threshold: np.ndarray
    paper_map: float
    tp50: int
    fp50: int
    fn50: int
    ap50: float
    precision50: float
    recall50: float
    f1_50: float
    mean_matched_iou: float
    half_matches: int = 0

    @classmethod
    def from_matches(cls, matched_ious: np.ndarray, n_truth: int, n_predicted: int,
                     half_matches: int = 0) -> InstanceScores:
        """Scores from the matched IoUs (> 0.5), the object counts and the one-to-one matches
        at IoU exactly 0.5 (which only the paper's r = 0.50 term counts)."""
        matched_ious = np.sort(np.asarray(matched_ious, dtype=np.float64))
        no_error_possible = n_truth == 0 and n_predicted == 0
        tp_dsb = _true_positives_at(matched_ious, DSB_THRESHOLDS)
        dsb = _ratio(tp_dsb, n_truth + n_predicted - tp_dsb, no_error_possible)
        tp_paper = _true_positives_at_or_above(matched_ious, PAPER_THRESHOLDS)
        tp_paper = tp_paper + np.where(PAPER_THRESHOLDS == 0.5, int(half_matches), 0)
        paper = _ratio(tp_paper, n_predicted, no_error_possible)
        tp = int(matched_ious.size)
        fp, fn = n_predicted - tp, n_truth - tp
        no_error = fp == 0 and fn == 0
        return cls(
            n_truth=n_truth,
            n_predicted=n_predicted,
            matched_ious=matched_ious,
            dsb_per_threshold=dsb,
            dsb_map=float(dsb.mean()),
            paper_per_threshold=paper,
            paper_map=float(paper.mean()),
            tp50=tp,
            fp50=fp,
            fn50=fn,
            ap50=_ratio(tp, tp + fp + fn, no_error),
            precision50=_ratio(tp, tp + fp, no_error),
            recall50=_ratio(tp, tp + fn, no_error),
            f1_50=_ratio(2 * tp, 2 * tp + fp + fn, no_error),
            mean_matched_iou=float(matched_ious.mean()) if tp else math.nan,
            half_matches=int(half_matches),
        )

    def named(self) -> dict[str, float | int]:
        """Every instance score under its display name."""
        keys = ("dsb_map", "paper_map", "ap50", "precision50", "recall50", "f1_50", "tp50", "fp50", "fn50",
                "mean_matched_iou")
        return {METRIC_NAMES[key]: getattr(self, key) for key in keys}


def instance_scores(truth_labels: np.ndarray, predicted_labels: np.ndarray) -> InstanceScores:
    """Match predicted objects to truth objects and score the image.

    Parameters
    ----------
    truth_labels, predicted_labels : ndarray of int, same shape
        0 is background; ids need not be contiguous.

    Returns
    -------
    InstanceScores
        DSB mAP, the paper's mAP, AP/precision/recall/F1 at IoU 0.5 with TP/FP/FN counts,
        and the mean matched IoU. Both empty -> ratios 1.0; one side empty -> 0.0.
    """
    table = contingency(truth_labels, predicted_labels)
    return InstanceScores.from_matches(_matched_ious(table), table.truth_ids.size, table.predicted_ids.size,
                                       _half_matches(table))


@dataclass(frozen=True)
class InstanceSetScores:
    """Instance scores of a set of images: the per-image results and their aggregates.

    Attributes
    ----------
    per_image : tuple of InstanceScores
    dsb_map, paper_map, ap50 : float
        Means over images of the per-image scores (how DSB 2018 ranked submissions).
    tp50, fp50, fn50 : int
        Summed over images.
    precision50, recall50, f1_50 : float
        From the summed counts (pooled over all objects).
    mean_matched_iou : float
        Mean over every matched pair of every image; ``nan`` without any match.
    """

    per_image: tuple[InstanceScores, ...]
    dsb_map: float
    paper_map: float
    ap50: float
    tp50: int
    fp50: int
    fn50: int
    precision50: float
    recall50: float
    f1_50: float
    mean_matched_iou: float

    named = InstanceScores.named  # the aggregate has the same attribute names


def summarize_instance_scores(per_image: Sequence[InstanceScores]) -> InstanceSetScores:
    """Aggregate per-image instance scores: means for the mAPs, sums for the counts."""
    per_image = tuple(per_image)
    if not per_image:
        raise MetricInputError("cannot summarize instance scores of zero images")
    tp = sum(scores.tp50 for scores in per_image)
    fp = sum(scores.fp50 for scores in per_image)
    fn = sum(scores.fn50 for scores in per_image)
    no_error = fp == 0 and fn == 0
    all_matches = np.concatenate([scores.matched_ious for scores in per_image])
    return InstanceSetScores(
        per_image=per_image,
        dsb_map=float(np.mean([scores.dsb_map for scores in per_image])),
        paper_map=float(np.mean([scores.paper_map for scores in per_image])),
        ap50=float(np.mean([scores.ap50 for scores in per_image])),
        tp50=tp,
        fp50=fp,
        fn50=fn,
        precision50=_ratio(tp, tp + fp, no_error),
        recall50=_ratio(tp, tp + fn, no_error),
        f1_50=_ratio(2 * tp, 2 * tp + fp + fn, no_error),
        mean_matched_iou=float(all_matches.mean()) if all_matches.size else math.nan,
    )


# --------------------------------------------------------------------------------------
# ISBI 2012 foreground-restricted Rand and information scores
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForegroundRestrictedScores:
    """V_Rand and V_Info of a segmentation S against a truth T (Arganda-Carreras et al. 2015).

    Attributes
    ----------
    v_rand : float
        sum_ij p_ij^2 / (0.5 sum_j s_j^2 + 0.5 sum_i t_i^2), the harmonic mean of the two below.
    v_rand_split : float
        sum p_ij^2 / sum t_i^2 (1 = no truth object is split).
    v_rand_merge : float
        sum p_ij^2 / sum s_j^2 (1 = no predicted object merges truth objects).
    v_info : float
        I(S;T) / (0.5 H(S) + 0.5 H(T)), the harmonic mean of the two below.
    v_info_split : float
        I(S;T) / H(S); 1.0 when H(S) = 0 (a single segment cannot split anything).
    v_info_merge : float
        I(S;T) / H(T); 1.0 when H(T) = 0.
    entropy_truth, entropy_prediction, mutual_information : float
        H(T), H(S), I(S;T) in bits.
    n_pixels : int
        Truth foreground pixels scored.

    Here p_ij is the fraction of those pixels in truth object i and predicted object j,
    t_i and s_j the marginals. All are ``nan`` when the truth has no foreground.
    """

    v_rand: float
    v_rand_split: float
    v_rand_merge: float
    v_info: float
    v_info_split: float
    v_info_merge: float
    entropy_truth: float
    entropy_prediction: float
    mutual_information: float
    n_pixels: int

    def named(self) -> dict[str, float]:
        keys = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")
        return {METRIC_NAMES[key]: getattr(self, key) for key in keys}


def _entropy_bits(counts: np.ndarray, n_pixels: int) -> float:
    """-sum (c / n) log2 (c / n) over the non-zero counts."""
    counts = counts[counts > 0].astype(np.float64)
    probabilities = counts / n_pixels
    return float(-np.sum(probabilities * np.log2(probabilities)))


def foreground_restricted_scores(
    truth_labels: np.ndarray,
    predicted_labels: np.ndarray,
    *,
    background_as_singletons: bool = True,
    count_pairs: bool = False,
) -> ForegroundRestrictedScores:
    """ISBI 2012 V_Rand and V_Info, restricted to the truth foreground.

    Only pixels where the truth is foreground (label != 0) are scored, as in the
    challenge's Fiji script (``foregroundRestrictedStatsN2`` and
    ``foregroundRestrictedFscore`` of Trainable Segmentation). Predicted background
    (label 0) inside the truth foreground is treated as in that script: every such pixel
    is a segment of its own (a singleton), so unassigned boundary pixels count as splits
    and never as a merge. The challenge also thins the proposal's borders and takes the
    best score over thresholds of a boundary map; here the given label image is scored
    as it is. One deliberate difference: when truth and prediction are both one single
    segment, V_Info is 1.0 here (identical partitions) where the script returns 0.

    Parameters
    ----------
    truth_labels, predicted_labels : ndarray of int, same shape
        For ISBI 2012, the truth cells are the connected components of the interior.
    background_as_singletons : bool
        False treats predicted background as one ordinary segment instead.
    count_pairs : bool
        True counts unordered pixel pairs, n_ij (n_ij - 1), instead of the challenge's
        n_ij^2. With ``background_as_singletons=False, count_pairs=True``, ``1 - v_rand``
        equals ``skimage.metrics.adapted_rand_error(truth, prediction)[0]``.

    Returns
    -------
    ForegroundRestrictedScores
        ``nan`` everywhere when the truth has no foreground.
    """
    table = contingency(truth_labels, predicted_labels)
    in_truth_objects = table.rows > 0
    columns, counts = table.columns[in_truth_objects], table.counts[in_truth_objects]
    n_pixels = int(counts.sum())
    if n_pixels == 0:
        return ForegroundRestrictedScores(*([math.nan] * 9), n_pixels=0)

    unassigned = int(counts[columns == 0].sum()) if background_as_singletons else 0
    if background_as_singletons:
        joint = counts[columns > 0]
        predicted_sizes = np.bincount(columns[columns > 0], weights=joint, minlength=table.predicted_ids.size + 1)
    else:
        joint = counts
        predicted_sizes = np.bincount(columns, weights=counts, minlength=table.predicted_ids.size + 1)
    predicted_sizes = predicted_sizes[predicted_sizes > 0]
    truth_sizes = table.truth_areas[1:]
    truth_sizes = truth_sizes[truth_sizes > 0].astype(np.float64)

    def sum_of_squares(sizes: np.ndarray, singletons: int) -> float:
        sizes = np.asarray(sizes, dtype=np.float64)
        # A singleton contributes 1 to a sum of squares and 0 to a count of pairs.
        return float(np.sum(sizes * (sizes - 1.0))) if count_pairs else float(np.sum(sizes * sizes)) + singletons

    joint_sq = sum_of_squares(joint, unassigned)
    truth_sq = sum_of_squares(truth_sizes, 0)
    predicted_sq = sum_of_squares(predicted_sizes, unassigned)
    v_rand_split = joint_sq / truth_sq if truth_sq > 0 else math.nan
    v_rand_merge = joint_sq / predicted_sq if predicted_sq > 0 else math.nan
    v_rand = 2.0 * joint_sq / (truth_sq + predicted_sq) if truth_sq + predicted_sq > 0 else math.nan

    # Each singleton has probability 1/n and adds (1/n) log2 n to an entropy.
    singleton_entropy = unassigned / n_pixels * math.log2(n_pixels)
    entropy_truth = _entropy_bits(truth_sizes, n_pixels)
    entropy_prediction = _entropy_bits(predicted_sizes, n_pixels) + singleton_entropy
    joint_entropy = _entropy_bits(joint, n_pixels) + singleton_entropy
    mutual_information = max(entropy_truth + entropy_prediction - joint_entropy, 0.0)
    entropy_sum = entropy_truth + entropy_prediction
    return ForegroundRestrictedScores(
        v_rand=v_rand,
        v_rand_split=v_rand_split,
        v_rand_merge=v_rand_merge,
        v_info=2.0 * mutual_information / entropy_sum if entropy_sum > 0 else 1.0,
        v_info_split=mutual_information / entropy_prediction if entropy_prediction > 0 else 1.0,
        v_info_merge=mutual_information / entropy_truth if entropy_truth > 0 else 1.0,
        entropy_truth=entropy_truth,
        entropy_prediction=entropy_prediction,
        mutual_information=mutual_information,
        n_pixels=n_pixels,
    )


# --------------------------------------------------------------------------------------
# Everything at once, for label images from any tool
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelImageScores:
    """Pixel, instance and foreground-restricted scores of one predicted label image."""

    pixels: PixelCounts
    instances: InstanceScores
    foreground_restricted: ForegroundRestrictedScores

    def named(self) -> dict[str, float | int]:
        return {**self.pixels.named(), **self.instances.named(), **self.foreground_restricted.named()}


def score_label_image(truth_labels: np.ndarray, predicted_labels: np.ndarray) -> LabelImageScores:
    """Score a predicted label image: pixels (truth > 0 vs prediction > 0), objects, V_Rand/V_Info.

    Parameters
    ----------
    truth_labels, predicted_labels : ndarray of int, same shape
    """
    truth_labels = _as_label_image(truth_labels, "truth labels")
    predicted_labels = _as_label_image(predicted_labels, "predicted labels")
    return LabelImageScores(
        pixels=pixel_counts(predicted_labels != 0, truth_labels != 0),
        instances=instance_scores(truth_labels, predicted_labels),
        foreground_restricted=foreground_restricted_scores(truth_labels, predicted_labels),
    )


@dataclass(frozen=True)
class LabelSetScores:
    """Scores of a set of label images.

    Attributes
    ----------
    per_image : tuple of LabelImageScores
    pixels : PixelCounts
        Summed over images (micro average).
    instances : InstanceSetScores
        Means over images for the mAPs and AP@0.5; summed TP/FP/FN.
    v_rand, v_rand_split, v_rand_merge, v_info, v_info_split, v_info_merge : float
        Means over the images whose truth has foreground (per slice, as the Fiji script).
    """

    per_image: tuple[LabelImageScores, ...]
    pixels: PixelCounts
    instances: InstanceSetScores
    v_rand: float
    v_rand_split: float
    v_rand_merge: float
    v_info: float
    v_info_split: float
    v_info_merge: float

    def named(self) -> dict[str, float | int]:
        """Every aggregated score under its display name."""
        foreground = {METRIC_NAMES[key]: getattr(self, key) for key in
                      ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")}
        return {**self.pixels.named(), **self.instances.named(), **foreground}


def summarize_label_scores(per_image: Sequence[LabelImageScores]) -> LabelSetScores:
    """Aggregate per-image scores (see :class:`LabelSetScores` for how each is pooled)."""
    per_image = tuple(per_image)
    if not per_image:
        raise MetricInputError("cannot summarize the scores of zero images")

    def mean_over_scored(key: str) -> float:
        values = np.array([getattr(scores.foreground_restricted, key) for scores in per_image])
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan

    return LabelSetScores(
        per_image=per_image,
        pixels=sum((scores.pixels for scores in per_image), PixelCounts()),
        instances=summarize_instance_scores([scores.instances for scores in per_image]),
        **{key: mean_over_scored(key) for key in
           ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")},
    )
