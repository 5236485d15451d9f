"""Tests of core.figures: the grid heatmap, training curves, ROC / PR figures and the one palette."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import figures
from core.metrics import METRIC_NAMES
from core.tables import grid_summary, operating_point
from helpers import curves_of, grid_table


def test_grid_heatmap_writes_mean_sd_and_n_in_each_cell():
    figure = figures.grid_heatmap(grid_summary(grid_table(), "F1"))
    text = figure.data[0].text
    assert text[1][0] == "0.600 ± 0.141<br>n = 2"
    assert text[0][0] == "0.400<br>n = 1"
    assert text[1][1] == "no runs"
    assert list(figure.data[0].x) == ["10%", "50%"]


def test_roc_pr_figures_show_areas_in_the_legend_and_mark_the_operating_point():
    rng = np.random.default_rng(2)
    truth = rng.random((32, 32)) > 0.5
    curves = {"run A": curves_of(np.where(truth, 0.8, 0.3).astype(np.float32), truth),
              "run B": curves_of(rng.random((32, 32)).astype(np.float32), truth)}
    roc, pr = figures.roc_pr_figures(curves, 0.5)
    names = [trace.name for trace in roc.data if trace.showlegend is not False]
    assert f"run A ({METRIC_NAMES['roc_auc']} = 1.0000)" in names
    assert any(name.startswith("run B (ROC-AUC (pixels) = 0.") for name in names)
    assert any(f"{METRIC_NAMES['average_precision']} = 1.0000" in trace.name for trace in pr.data if trace.name)
    markers = [trace for trace in roc.data if trace.mode == "markers"]
    assert len(markers) == 2
    point = operating_point(curves["run A"], 0.5)
    assert (markers[0].x[0], markers[0].y[0]) == (point["fpr"], point["tpr"]) == (0.0, 1.0)
    # Each run keeps its palette colour on both figures.
    assert [trace.line.color for trace in roc.data[:4:2]] == figures.palette(2)
    assert [trace.line.color for trace in pr.data[:4:2]] == figures.palette(2)


def test_curves_from_arrays_round_trip():
    truth = np.eye(8, dtype=bool)
    curves = curves_of(np.where(truth, 0.9, 0.2).astype(np.float32), truth)
    arrays = {f"curve_{key}": value for key, value in curves.to_dict().items()}
    arrays["probability_0"] = np.zeros((2, 2), np.float16)
    rebuilt = figures.curves_from_arrays(arrays)
    assert rebuilt.roc_auc == curves.roc_auc and np.array_equal(rebuilt.tpr, curves.tpr)
    assert figures.curves_from_arrays({}) is None


def test_training_curves_figure_has_one_trace_per_run_and_panel():
    history = [{"epoch": 0, "val_loss": 0.7, "val_f1": 0.2},
               {"epoch": 1, "train_loss": 0.6, "val_loss": 0.5, "val_f1": 0.5},
               {"epoch": 2, "train_loss": 0.4, "val_loss": 0.4, "val_f1": 0.7}]
    figure = figures.training_curves_figure({"a": history, "b": history[:2]})
    assert len(figure.data) == 6
    train_loss_a = figure.data[0]
    assert list(train_loss_a.x) == [1, 2] and list(train_loss_a.y) == [0.6, 0.4]  # epoch 0 has no training loss
    assert list(figure.data[2].y) == [0.2, 0.5, 0.7]


def test_palette_is_distinct_then_repeats():
    assert figures.palette(0) == figures.palette(1) == [figures.PALETTE[0]]
    colours = figures.palette(len(figures.PALETTE) + 2)
    assert len(set(colours[:len(figures.PALETTE)])) == len(figures.PALETTE)
    assert colours[-2:] == list(figures.PALETTE[:2])


def test_the_report_colours_levels_from_the_palette():
    from core.report import fraction_lines_figure

    rows = [{"Dataset": "d", "Train fraction": fraction, "Augmentation": level, "F1": value}
            for fraction, level, value in ((0.1, "none", 0.5), (0.5, "none", 0.6), (0.1, "heavy", 0.55))]
    figure = fraction_lines_figure(pd.DataFrame(rows), "d", {"f1": "F1"})
    assert {trace.name: trace.line.color for trace in figure.data} == dict(zip(["none", "heavy"], figures.palette(2)))


def test_grid_heatmap_gives_each_setting_its_own_rows():
    table = pd.DataFrame([("none", 0.1, 0.5, "75 steps"), ("none", 0.1, 0.9, "150 steps"), ("heavy", 0.1, 0.4, "75 steps")],
                         columns=["Augmentation", "Train fraction", "F1", "Setting"])
    figure = figures.grid_heatmap(grid_summary(table, "F1"))
    assert list(figure.data[0].y) == ["none | 75 steps", "heavy | 75 steps", "none | 150 steps"]
    assert [row[0] for row in figure.data[0].text] == ["0.500<br>n = 1", "0.400<br>n = 1", "0.900<br>n = 1"]


def test_learning_curve_figure_shows_means_over_seeds_and_the_fit():
    from core.stats import fit_learning_curve

    rng = np.random.default_rng(0)
    sizes = np.repeat([3, 6, 12, 24], 3)
    seeds = np.tile([0, 1, 2], 4)
    scores = 0.9 - 0.5 * sizes ** -0.7 + rng.normal(0, 0.005, sizes.size)
    points = pd.DataFrame({"n": sizes.astype(float), "score": scores, "seed": seeds})
    curve = fit_learning_curve(sizes, scores, seeds, ceiling=1.0, n_resamples=200)
    figure = figures.learning_curve_figure({"pixel F1": {"none": (points, curve)}}, title="t")
    markers = figure.data[0]
    assert list(markers.x) == [3, 6, 12, 24]
    assert markers.y[0] == pytest.approx(scores[:3].mean())
    means = figures.seed_means(points)
    from scipy.stats import t

    half = t.ppf(0.975, 2) * scores[:3].std(ddof=1) / np.sqrt(3)
    assert means.loc[0, "high"] - means.loc[0, "mean"] == pytest.approx(half)
    fit = figure.data[1]
    assert fit.mode == "lines" and fit.y[0] == pytest.approx(curve.predict(3))
    assert figure.layout.xaxis.type == "log"


# ---- round two (#16): marked heatmap cells, a fixed scale, live curves, axes that keep to the data -----


def test_grid_heatmap_marks_the_best_cell_and_its_equals_and_can_fix_the_scale():
    grid = grid_summary(grid_table(), "F1")
    figure = figures.grid_heatmap(grid, best=("none", 0.5), near=[("light", 0.1)], zero_to_one=True)
    text = figure.data[0].text
    assert text[0][1].startswith("<b>") and "best" in text[0][1]
    assert text[1][0].endswith("≈ best")
    assert (figure.data[0].zmin, figure.data[0].zmax) == (0.0, 1.0)
    assert len(figure.layout.shapes) == 2 and figure.layout.shapes[1].line.dash == "dash"
    plain = figures.grid_heatmap(grid)
    assert plain.data[0].zmin is None and not plain.layout.shapes


def test_data_range_keeps_to_the_data():
    assert figures.data_range([0.2, 0.4], 0.0, 1.0) == pytest.approx([0.184, 0.416])
    assert figures.data_range([0.5], 0.0, 1.0) == pytest.approx([0.46, 0.54])
    assert figures.data_range([0.0, 1.0], 0.0, 1.0) == [0.0, 1.0]
    assert figures.data_range([]) is None


def test_live_figure_streams_step_losses_and_falls_back_to_running_means():
    history = [{"epoch": 0, "val_loss": 0.7, "val_f1": 0.1},
               {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_f1": 0.3, "step_losses": [0.6, 0.5, 0.4]}]
    progress = {"epoch": 2, "step": 2, "phase": "training", "train_loss": 0.35, "step_losses": [0.38, 0.32]}
    steps, losses, kind = figures.step_losses(history, progress, 3)
    assert (steps, losses, kind) == ([1, 2, 3, 4, 5], [0.6, 0.5, 0.4, 0.38, 0.32], "per step")
    figure = figures.live_training_figure(history, progress, 3)
    assert len(figure.data[0].x) == 5 and figure.data[1].name.startswith("smoothed")
    f1_axis = figure.layout.yaxis3.range
    assert 0 <= f1_axis[0] < 0.1 and 0.3 < f1_axis[1] < 0.35  # not -0.5 to 1
    # Without per-step losses: each epoch's mean, and the first epoch's running mean while it trains.
    steps, losses, kind = figures.step_losses(history[:1], {"epoch": 1, "step": 7, "phase": "training",
                                                            "train_loss": 0.52}, 25)
    assert (steps, losses, kind) == ([7], [0.52], "mean per epoch")
    assert figures.smoothed([1.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3])


def test_training_curves_keep_the_f1_axis_to_the_data():
    figure = figures.training_curves_figure({"a": [{"epoch": 0, "val_f1": 0.2, "val_loss": 0.7},
                                                   {"epoch": 1, "val_f1": 0.25, "val_loss": 0.6, "train_loss": 0.65}]})
    low, high = figure.layout.yaxis3.range
    assert 0.19 < low < 0.2 and 0.25 < high < 0.26
