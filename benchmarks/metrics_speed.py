"""Speed of the metrics and the post-processing (``python -m benchmarks.metrics_speed``).

Prints one table per section:

1. DSB mAP on a 512x512 pair with about 300 instances: the whole metric, its bincount
   IoU table alone, and a per-object loop in the same run (target: under 5 ms);
2. ROC / precision-recall over 50 million pixels from probability histograms, beside
   scikit-learn's exact ``roc_auc_score`` + ``average_precision_score`` (10 million pixels
   by default, ``--sklearn-pixels`` to change): time, peak memory (tracemalloc) and
   the difference of the two results on the same pixels;
3. the three post-processing methods on a 1024x1024 probability map;
4. tiled prediction (``core.predict``) of 1024, 2048 and 4096 pixel square images:
   time and the rise of peak resident memory (target: about 1 GB at most for 4096x4096).

Timings are medians of repeated runs; the machine's other load shows up in them.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.segmentation import expand_labels

from core.metrics import (
    DSB_THRESHOLDS,
    PixelCurveAccumulator,
    contingency,
    instance_scores,
)
from core.postprocess import METHODS


def median_ms(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of ``function()`` in milliseconds, after a warm-up call.

    CPU time (this process only) is the better guide when other programs load the machine.
    """
    function()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall) * 1000), float(np.median(cpu) * 1000)


def format_ms(times: tuple[float, float], digits: int = 2) -> tuple[str, str]:
    return tuple(f"{value:.{digits}f}" for value in times)


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in (header, tuple("-" * width for width in widths), *rows):
        print("  " + "  ".join(f"{str(cell):<{width}}" for cell, width in zip(row, widths)))


# --------------------------------------------------------------------------------------
# 1. DSB mAP
# --------------------------------------------------------------------------------------


def random_instances(shape: tuple[int, int], n_objects: int, seed: int) -> np.ndarray:
    """Touching cells: seeds grown into a Voronoi-like tiling, cut to a maximum radius."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    seeds = rng.integers(0, shape, size=(n_objects, 2))
    labels[seeds[:, 0], seeds[:, 1]] = rng.permutation(n_objects) * 5 + 3  # scattered ids
    return expand_labels(labels, 12)


def dsb_map_per_object_loop(truth: np.ndarray, prediction: np.ndarray) -> float:
    """The textbook implementation: one boolean mask per truth object."""
    truth_ids = np.unique(truth)[1:]
    predicted_ids = np.unique(prediction)[1:]
    predicted_areas = {j: np.count_nonzero(prediction == j) for j in predicted_ids}
    matched = []
    for i in truth_ids:
        inside = truth == i
        area = np.count_nonzero(inside)
        overlapping, overlaps = np.unique(prediction[inside], return_counts=True)
        for j, overlap in zip(overlapping, overlaps):
            if j != 0:
                iou = overlap / (area + predicted_areas[j] - overlap)
                if iou > 0.5:
                    matched.append(iou)
    matched = np.array(matched)
    scores = []
    for threshold in DSB_THRESHOLDS:
        tp = np.count_nonzero(matched > threshold)
        scores.append(tp / (len(truth_ids) + len(predicted_ids) - tp))
    return float(np.mean(scores))


def bench_instance_metrics(repeats: int) -> None:
    truth = random_instances((512, 512), 300, seed=0)
    prediction = np.roll(random_instances((512, 512), 300, seed=0), 2, axis=1)
    prediction[prediction == prediction.max()] = 0  # one missed object
    ours, loop = instance_scores(truth, prediction).dsb_map, dsb_map_per_object_loop(truth, prediction)
    assert abs(ours - loop) < 1e-12, (ours, loop)
    n_objects = len(np.unique(truth)) - 1
    rows = [
        ("instance_scores (whole DSB mAP, bincount IoU)",
         *format_ms(median_ms(lambda: instance_scores(truth, prediction), repeats))),
        ("contingency table alone (bincount)", *format_ms(median_ms(lambda: contingency(truth, prediction), repeats))),
        ("per-object loop (boolean mask per object)",
         *format_ms(median_ms(lambda: dsb_map_per_object_loop(truth, prediction), max(repeats // 10, 3)))),
    ]
    print_table(f"1. DSB mAP, 512x512, {n_objects} instances (same value both ways: {ours:.4f}); target < 5 ms",
                ("implementation", "wall ms", "CPU ms"), rows)


# --------------------------------------------------------------------------------------
# 2. ROC and precision-recall curves
# --------------------------------------------------------------------------------------


def synthetic_pixels(n_pixels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a confident network (many within 1e-4 of 0 or 1) and their truth."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n_pixels, dtype=np.float32) < 0.22
    logits = rng.standard_normal(n_pixels, dtype=np.float32) * 4 + np.where(truth, 4.0, -3.0).astype(np.float32)
    return (1 / (1 + np.exp(-logits))).astype(np.float32), truth


def bench_curves(n_pixels: int, n_sklearn: int) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    image_pixels = 1_000_000
    n_images = max(n_pixels // image_pixels, 1)
    accumulator = PixelCurveAccumulator()
    update_seconds, update_cpu, update_peak = 0.0, 0.0, 0
    tracemalloc.start()
    for index in range(n_images):
        probabilities, truth = synthetic_pixels(image_pixels, seed=index)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        start, start_cpu = time.perf_counter(), time.process_time()
        accumulator.update(probabilities, truth)
        update_seconds += time.perf_counter() - start
        update_cpu += time.process_time() - start_cpu
        update_peak = max(update_peak, tracemalloc.get_traced_memory()[1] - before)
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    curves = accumulator.result()
    result_seconds = time.perf_counter() - start
    result_peak = tracemalloc.get_traced_memory()[1] - before

    # The first n_sklearn pixels again, scored both ways.
    parts = [synthetic_pixels(image_pixels, seed=index) for index in range(max(n_sklearn // image_pixels, 1))]
    probabilities = np.concatenate([p for p, _ in parts])
    truth = np.concatenate([t for _, t in parts])
    del parts
    subset = PixelCurveAccumulator()
    subset.update(probabilities, truth)
    subset_curves = subset.result()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    start, start_cpu = time.perf_counter(), time.process_time()
    sklearn_auc = roc_auc_score(truth, probabilities)
    sklearn_ap = average_precision_score(truth, probabilities)
    sklearn_seconds, sklearn_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    sklearn_peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()

    mib = 1024 * 1024
    rows = [
        (f"histogram accumulator, {n_images * image_pixels / 1e6:.0f}M px (update)", f"{update_seconds:.2f}",
         f"{update_cpu:.2f}", f"{update_peak / mib:.0f}", f"{curves.roc_auc:.6f}", f"{curves.average_precision:.6f}"),
        ("  then result() (curves, areas, downsampling)", f"{result_seconds:.3f}", "", f"{result_peak / mib:.0f}", "", ""),
        (f"histogram accumulator, first {truth.size / 1e6:.0f}M px", "", "", "", f"{subset_curves.roc_auc:.6f}",
         f"{subset_curves.average_precision:.6f}"),
        (f"scikit-learn exact, same {truth.size / 1e6:.0f}M px", f"{sklearn_seconds:.2f}", f"{sklearn_cpu:.2f}",
         f"{sklearn_peak / mib:.0f}", f"{sklearn_auc:.6f}", f"{sklearn_ap:.6f}"),
        ("difference (histogram - exact)", "", "", "", f"{subset_curves.roc_auc - sklearn_auc:+.2e}",
         f"{subset_curves.average_precision - sklearn_ap:+.2e}"),
    ]
    print_table("2. ROC / PR curves (peak = extra memory while computing, tracemalloc)",
                ("computation", "wall s", "CPU s", "peak MiB", "ROC-AUC", "AP"), rows)


# --------------------------------------------------------------------------------------
# 3. Post-processing
# --------------------------------------------------------------------------------------


def synthetic_probability_map(size: int, n_objects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blurred, noisy map of random discs (some touching or overlapping) and its truth labels."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), np.int32)
    for object_id in range(1, n_objects + 1):
        centre = rng.integers(16, size - 16, size=2)
        rows, columns = disk(tuple(centre), rng.uniform(7, 15), shape=truth.shape)
        free = truth[rows, columns] == 0
        truth[rows[free], columns[free]] = object_id
    smooth = ndi.gaussian_filter((truth > 0).astype(np.float32), 1.5)
    noisy = smooth + rng.normal(0, 0.05, smooth.shape).astype(np.float32)
    return np.clip(noisy, 0, 1).astype(np.float32), truth


def bench_postprocess(repeats: int) -> None:
    probabilities, truth = synthetic_probability_map(1024, 300, seed=0)
    rows = []
    for name, method in METHODS.items():
        labels = method(probabilities)
        times = median_ms(lambda: method(probabilities), repeats)
        rows.append((name, *format_ms(times, 0), int(labels.max()), f"{instance_scores(truth, labels).dsb_map:.3f}"))
    n_truth = len(np.unique(truth)) - 1
    print_table(f"3. Post-processing, 1024x1024 map, {n_truth} discs (many touching), default parameters",
                ("method", "wall ms", "CPU ms", "objects found", "DSB mAP"), rows)


# --------------------------------------------------------------------------------------
# 4. Tiled prediction of a 4096x4096 image
# --------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident size (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def bench_tiled_prediction(sizes: tuple[int, ...] = (1024, 2048, 4096)) -> None:
    """Tiled prediction time and peak memory: memory must follow the tile, not the image."""
    import torch

    from core.model import UNet
    from core.predict import TileSettings, predict_probabilities

    torch.manual_seed(0)
    model = UNet(1, base_width=16, depth=4).eval().to(memory_format=torch.channels_last)
    settings = TileSettings(tile_size=512, overlap=64, batch_size=4)
    rows = []
    for size in sizes:
        image = np.random.default_rng(0).random((size, size, 1), dtype=np.float32)
        for precision in ("bf16", "fp32"):
            _reset_peak_rss()
            before = _peak_rss_mb()
            start = time.perf_counter()
            predict_probabilities(model, image, settings, "cpu", precision, channels_last=True)
            seconds = time.perf_counter() - start
            rows.append((f"{size}x{size}", precision, f"{seconds:.1f}", f"{size * size / seconds / 1e6:.2f}",
                         f"{_peak_rss_mb() - before:.0f}"))
        del image
    print_table("4. Tiled prediction, width-16 U-Net, tiles 512 with overlap 64, batch 4 "
                "(peak = rise of the process's peak resident memory during the call)",
                ("image", "precision", "seconds", "Mpixel/s", "peak MB"), rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curve-pixels", type=float, default=50e6, help="pixels for the histogram curves")
    parser.add_argument("--sklearn-pixels", type=float, default=10e6, help="pixels for scikit-learn's exact curves")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats of the fast sections")
    args = parser.parse_args(argv)
    bench_instance_metrics(args.repeats)
    bench_curves(int(args.curve_pixels), int(args.sklearn_pixels))
    bench_postprocess(max(args.repeats // 10, 3))
    bench_tiled_prediction()


if __name__ == "__main__":
    main()
