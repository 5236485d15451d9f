"""The home of every plotly figure U-Net Lab draws, and of its one colour palette.

The pages and the study report draw their figures with these functions, so a run, an
augmentation level or a grid cell looks the same everywhere. Line colours come from
:data:`PALETTE` (through :func:`palette`); continuous values use :data:`COLOURSCALE`.
The numbers behind the figures (grid means, operating points) are built in
:mod:`core.tables`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from core.metrics import METRIC_NAMES, PixelCurves
from core.tables import SCORE_DECIMALS, GridSummary, operating_point

#: Line and marker colours, in the order runs or levels take them: plotly's default
#: qualitative colours, then Dark24 so that up to 34 lines stay distinct.
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly + qualitative.Dark24)
#: Colour scale of continuous values (heatmaps; the Masks and Segment pages' probability maps).
COLOURSCALE = "Viridis"

#: Panel titles of the training-curve keys.
CURVE_PANELS: dict[str, str] = {
    "train_loss": "Training loss",
    "val_loss": "Validation loss (pixel BCE)",
    "val_f1": "Validation pixel F1 (Dice)",
}


def palette(n: int) -> list[str]:
    """``n`` colours of :data:`PALETTE` (at least one), repeating it past its end."""
    return [PALETTE[i % len(PALETTE)] for i in range(max(n, 1))]


# --------------------------------------------------------------------------------------
# The train-fraction x augmentation grid
# --------------------------------------------------------------------------------------


def grid_heatmap(grid: GridSummary, title: str | None = None, best: tuple[str, float] | None = None,
                 near: Sequence[tuple[str, float]] = (), zero_to_one: bool = False) -> go.Figure:
    """Heatmap of the grid means; each cell reads ``mean ± sd`` and ``n = count``.

    Parameters
    ----------
    grid : the cells (:func:`core.tables.grid_summary`)
    title : figure title
    best : (level, fraction) of the best cell, outlined and marked "best"
    near : cells not distinguishable from the best one (seed noise), outlined dashed and marked "≈"
    zero_to_one : fix the colour scale to [0, 1] (scores) instead of the cells' min..max, so that
        0.008 against 0.022 is not drawn as the two ends of the scale
    """
    near = {(level, float(fraction)) for level, fraction in near}
    best = None if best is None else (best[0], float(best[1]))
    text = []
    for level in grid.mean.index:
        line = []
        for fraction in grid.mean.columns:
            n = int(grid.count.loc[level, fraction])
            mean, sd = grid.mean.loc[level, fraction], grid.sd.loc[level, fraction]
            if n == 0:
                cell = "no runs"
            elif n == 1 or pd.isna(sd):
                cell = f"{mean:.{SCORE_DECIMALS}f}<br>n = {n}"
            else:
                cell = f"{mean:.{SCORE_DECIMALS}f} ± {sd:.{SCORE_DECIMALS}f}<br>n = {n}"
            key = (level, float(fraction))
            if key == best:
                cell = f"<b>{cell}<br>best</b>"
            elif key in near:
                cell = f"{cell}<br>≈ best"
            line.append(cell)
        text.append(line)
    scale = {"zmin": 0.0, "zmax": 1.0} if zero_to_one else {}
    figure = go.Figure(go.Heatmap(
        z=grid.mean.to_numpy(dtype=float),
        x=[f"{fraction:.0%}" for fraction in grid.mean.columns],
        y=list(grid.mean.index),
        text=text, texttemplate="%{text}", colorscale=COLOURSCALE,
        colorbar={"title": "mean" + (" (0 to 1)" if zero_to_one else "")}, **scale,
        hovertemplate="augmentation %{y}, train fraction %{x}<br>%{text}<extra></extra>",
    ))
    levels, fractions = list(grid.mean.index), [float(f) for f in grid.mean.columns]
    for key, dash in [(best, "solid"), *((cell, "dash") for cell in sorted(near))]:
        if key is None or key[0] not in levels or key[1] not in fractions:
            continue
        x, y = fractions.index(key[1]), levels.index(key[0])
        figure.add_shape(type="rect", x0=x - 0.48, x1=x + 0.48, y0=y - 0.48, y1=y + 0.48, xref="x", yref="y",
                         line={"color": "white" if dash == "solid" else "lightgrey", "width": 3, "dash": dash})
    figure.update_layout(
        title=title or f"{grid.metric}: mean ± sd over seeds",
        xaxis_title="train fraction", yaxis_title="augmentation level",
        yaxis={"type": "category"}, xaxis={"type": "category"}, height=160 + 70 * max(1, len(grid.mean.index)),
    )
    return figure


# --------------------------------------------------------------------------------------
# Learning curves: score against training images, with a fitted power law
# --------------------------------------------------------------------------------------


def seed_means(points: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per training-set size ``n``: the mean score over runs, a t interval over them and their count.

    ``points`` has columns ``n`` and ``score`` (one row per run); returns columns n, mean, low,
    high, count (low = high = mean for a single run).
    """
    from scipy.stats import t

    rows = []
    for n, group in points.groupby("n", sort=True):
        values = group["score"].to_numpy(float)
        mean = float(values.mean())
        half = 0.0
        if values.size >= 2:
            half = float(t.ppf((1 + confidence) / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
        rows.append({"n": float(n), "mean": mean, "low": mean - half, "high": mean + half, "count": values.size})
    return pd.DataFrame(rows, columns=["n", "mean", "low", "high", "count"])


def learning_curve_figure(panels: Mapping[str, Mapping[str, tuple[pd.DataFrame, Any]]], title: str = "") -> go.Figure:
    """Score against the number of training images, one panel per metric, one colour per level.

    Parameters
    ----------
    panels : metric name -> level -> (points, curve): ``points`` with columns ``n`` and
        ``score`` (one row per run), ``curve`` a :class:`core.stats.LearningCurve` (or None)
    title : figure title

    Each level shows the mean over runs at each size with a 95% t interval over seeds as error
    bars and, where the power law was fitted, the fitted curve with its bootstrap band (dotted).
    """
    figure = make_subplots(rows=1, cols=max(1, len(panels)), subplot_titles=list(panels))
    levels = list(dict.fromkeys(level for panel in panels.values() for level in panel))
    colours = dict(zip(levels, palette(len(levels))))
    for column, (metric, panel) in enumerate(panels.items(), start=1):
        for level, (points, curve) in panel.items():
            means = seed_means(points)
            colour = colours[level]
            figure.add_trace(go.Scatter(
                x=means["n"], y=means["mean"], mode="markers", name=level, legendgroup=level,
                showlegend=column == 1, marker={"color": colour, "size": 8},
                error_y={"type": "data", "symmetric": False, "array": means["high"] - means["mean"],
                         "arrayminus": means["mean"] - means["low"], "visible": True},
                customdata=means["count"],
                hovertemplate=f"{level}, %{{x:.0f}} training images<br>mean %{{y:.4f}} over %{{customdata}} runs"
                              "<extra></extra>"), row=1, col=column)
            if curve is None or not getattr(curve, "fitted", False):
                continue
            low_n, high_n = float(points["n"].min()), float(points["n"].max()) * 2
            grid = np.geomspace(max(low_n, 1e-9), high_n, 60)
            bands = np.array([curve.predict_interval(n) for n in grid])
            figure.add_trace(go.Scatter(x=grid, y=bands[:, 0], mode="lines", line={"color": colour},
                                        legendgroup=level, showlegend=False,
                                        hovertemplate=f"{level} fit: %{{y:.4f}} at %{{x:.0f}} images<extra></extra>"),
                             row=1, col=column)
            for edge in (1, 2):
                if np.isfinite(bands[:, edge]).any():
                    figure.add_trace(go.Scatter(x=grid, y=bands[:, edge], mode="lines", legendgroup=level,
                                                line={"color": colour, "dash": "dot", "width": 1}, showlegend=False,
                                                hoverinfo="skip"), row=1, col=column)
    figure.update_xaxes(title_text="training images (log scale)", type="log")
    figure.update_annotations(font_size=11)
    figure.update_layout(title=title or "Score against training images", height=420,
                         legend={"title": "augmentation"})
    return figure


# --------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------


def data_range(values: Sequence[float], low: float | None = None, high: float | None = None,
               pad: float = 0.08) -> list[float] | None:
    """An axis range that keeps to the data: min..max widened by ``pad`` of the span (a single
    value or a flat line by ``pad`` of its size), clipped to [``low``, ``high``]. None: no values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    margin = (hi - lo) * pad if hi > lo else max(abs(hi) * pad, 0.01)
    lo, hi = lo - margin, hi + margin
    if low is not None:
        lo = max(lo, low)
    if high is not None:
        hi = min(hi, high)
    return [lo, hi]


#: Bounds of each training-curve panel's values (F1 lies in [0, 1], losses are >= 0).
PANEL_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "train_loss": (0.0, None), "val_loss": (0.0, None), "val_f1": (0.0, 1.0)}


def training_curves_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]],
                           panels: Sequence[str] = ("train_loss", "val_loss", "val_f1")) -> go.Figure:
    """Per-epoch curves of several runs overlaid, one panel per metric; each panel's axis keeps
    to its data's range.

    Parameters
    ----------
    histories : run label -> ``Registry.epochs(run_id)`` (epoch 0 = the untrained model,
        which has no training loss)
    panels : keys of the epoch dicts, each drawn in its own panel
    """
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[CURVE_PANELS.get(p, p) for p in panels])
    values: dict[str, list[float]] = {key: [] for key in panels}
    for colour, (label, epochs) in zip(palette(len(histories)), histories.items()):
        for column, key in enumerate(panels, start=1):
            points = [(e["epoch"], e[key]) for e in epochs if isinstance(e.get(key), (int, float))]
            if not points:
                continue
            x, y = zip(*points)
            values[key].extend(y)
            figure.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, legendgroup=label,
                                        showlegend=column == 1, line={"color": colour}),
                             row=1, col=column)
    for column, key in enumerate(panels, start=1):
        span = data_range(values[key], *PANEL_BOUNDS.get(key, (None, None)))
        if span:
            figure.update_yaxes(range=span, row=1, col=column)
    figure.update_xaxes(title_text="epoch (0 = untrained)", dtick=1 if _max_epoch(histories) <= 20 else None)
    figure.update_annotations(font_size=13)
    figure.update_layout(height=380, legend={"orientation": "h", "y": -0.25}, margin={"t": 40})
    return figure


def smoothed(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard draws it): point i is the
    weighted mean of points 0..i with weights ``weight**(i - j)``."""
    out, average = [], 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * float(value)
        out.append(average / (1 - weight ** (i + 1)))
    return out


def step_losses(history: Sequence[Mapping[str, Any]], progress: Mapping[str, Any] | None,
                steps_per_epoch: int) -> tuple[list[int], list[float], str]:
    """The training loss against the optimiser step of a run so far, and what it is.

    Per-step losses where the training loop records them (``step_losses`` in each epoch's
    metrics and in the live progress: the current epoch's steps so far); else each finished
    epoch's mean training loss at its last step, plus the current epoch's running mean at the
    step it has reached (so the first epoch is not an empty panel).

    Returns (steps, losses, kind) with kind ``"per step"`` or ``"mean per epoch"``.
    """
    steps: list[int] = []
    losses: list[float] = []
    per_step = any(isinstance(e.get("step_losses"), list) for e in history) or (
        progress is not None and isinstance(progress.get("step_losses"), list))
    done = set()
    for epoch in history:
        number = int(epoch.get("epoch", 0))
        if number < 1:
            continue
        done.add(number)
        if per_step and isinstance(epoch.get("step_losses"), list):
            for i, loss in enumerate(epoch["step_losses"], start=1):
                steps.append((number - 1) * steps_per_epoch + i)
                losses.append(float(loss))
        elif epoch.get("train_loss") is not None:
            steps.append(number * steps_per_epoch)
            losses.append(float(epoch["train_loss"]))
    if progress and progress.get("phase") == "training" and int(progress.get("epoch") or 0) not in done:
        number = int(progress.get("epoch") or 0)
        if per_step and isinstance(progress.get("step_losses"), list):
            for i, loss in enumerate(progress["step_losses"], start=1):
                steps.append((number - 1) * steps_per_epoch + i)
                losses.append(float(loss))
        elif progress.get("train_loss") is not None and progress.get("step"):
            steps.append((number - 1) * steps_per_epoch + int(progress["step"]))
            losses.append(float(progress["train_loss"]))
    return steps, losses, "per step" if per_step else "mean per epoch"


def live_training_figure(history: Sequence[Mapping[str, Any]], progress: Mapping[str, Any] | None,
                         steps_per_epoch: int, smoothing: float = 0.8) -> go.Figure:
    """A running run's curves against the optimiser step: the training loss (each step, faint,
    and smoothed, see :func:`smoothed`), the validation loss and pixel F1 after each epoch
    (epoch 0, the untrained model, at step 0). Every axis keeps to its data's range."""
    figure = make_subplots(rows=1, cols=3, subplot_titles=[CURVE_PANELS["train_loss"], CURVE_PANELS["val_loss"],
                                                           CURVE_PANELS["val_f1"]])
    steps, losses, kind = step_losses(history, progress, steps_per_epoch)
    if steps:
        if kind == "per step":
            figure.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name="training loss per step",
                                        line={"color": PALETTE[0], "width": 1}, opacity=0.35), row=1, col=1)
            figure.add_trace(go.Scatter(x=steps, y=smoothed(losses, smoothing), mode="lines",
                                        name=f"smoothed (moving average, weight {smoothing:g})",
                                        line={"color": PALETTE[0], "width": 2.5}), row=1, col=1)
        else:
            figure.add_trace(go.Scatter(x=steps, y=losses, mode="lines+markers", name="training loss (mean so far "
                                        "in each epoch)", line={"color": PALETTE[0]}), row=1, col=1)
        figure.update_yaxes(range=data_range(losses, 0.0), row=1, col=1)
    for column, key in ((2, "val_loss"), (3, "val_f1")):
        points = [(int(e["epoch"]) * steps_per_epoch, float(e[key])) for e in history
                  if isinstance(e.get(key), (int, float))]
        if not points:
            continue
        x, y = zip(*points)
        figure.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=CURVE_PANELS[key],
                                    line={"color": PALETTE[column - 1]}), row=1, col=column)
        figure.update_yaxes(range=data_range(y, *PANEL_BOUNDS[key]), row=1, col=column)
    last = max([*steps, *(int(e.get("epoch", 0)) * steps_per_epoch for e in history), 1])
    figure.update_xaxes(title_text="optimiser step", range=[0, last * 1.03])
    figure.update_annotations(font_size=12)
    figure.update_layout(height=280, showlegend=False, margin={"t": 40, "b": 20})
    return figure


def _max_epoch(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    return max((e["epoch"] for epochs in histories.values() for e in epochs), default=0)


# --------------------------------------------------------------------------------------
# ROC and precision-recall curves
# --------------------------------------------------------------------------------------


def curves_from_arrays(arrays: Mapping[str, np.ndarray]) -> PixelCurves | None:
    """The stored curves of an evaluation (``curve_*`` arrays) as a PixelCurves, or None."""
    stored = {key[len("curve_"):]: value for key, value in arrays.items() if key.startswith("curve_")}
    return PixelCurves.from_dict(stored) if stored else None


def roc_pr_figures(curves_by_run: Mapping[str, Any], threshold: float) -> tuple[go.Figure, go.Figure]:
    """ROC and PR curves of several runs overlaid, AUC / AP in the legend, the operating
    point at ``threshold`` marked on each curve.

    Parameters
    ----------
    curves_by_run : run label -> core.metrics.PixelCurves
    threshold : probability threshold of the marked operating point
    """
    roc, pr = go.Figure(), go.Figure()
    for colour, (label, curves) in zip(palette(len(curves_by_run)), curves_by_run.items()):
        point = operating_point(curves, threshold)
        roc.add_trace(go.Scatter(
            x=curves.fpr, y=curves.tpr, mode="lines", line={"color": colour}, legendgroup=label,
            name=f"{label} ({METRIC_NAMES['roc_auc']} = {curves.roc_auc:.4f})",
            hovertemplate="FPR %{x:.4f}, TPR %{y:.4f}<extra></extra>"))
        pr.add_trace(go.Scatter(
            x=curves.recall, y=curves.precision, mode="lines", line={"color": colour}, legendgroup=label,
            name=f"{label} ({METRIC_NAMES['average_precision']} = {curves.average_precision:.4f})",
            hovertemplate="recall %{x:.4f}, precision %{y:.4f}<extra></extra>"))
        marker = {"color": colour, "size": 11, "symbol": "circle-open", "line": {"width": 3}}
        caption = f"curve point at probability >= {point['threshold']:.3f}"
        roc.add_trace(go.Scatter(x=[point["fpr"]], y=[point["tpr"]], mode="markers", marker=marker,
                                 legendgroup=label, showlegend=False,
                                 hovertemplate=f"{label}<br>{caption}<br>FPR %{{x:.4f}}, TPR %{{y:.4f}}<extra></extra>"))
        pr.add_trace(go.Scatter(x=[point["recall"]], y=[point["precision"]], mode="markers", marker=marker,
                                legendgroup=label, showlegend=False,
                                hovertemplate=f"{label}<br>{caption}<br>recall %{{x:.4f}}, precision %{{y:.4f}}<extra></extra>"))
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="chance (ROC-AUC 0.5)"))
    roc.update_layout(title=f"ROC curves (pixels); circles: threshold {threshold:g}",
                      xaxis_title="false positive rate FP/(FP+TN)", yaxis_title="true positive rate TP/(TP+FN)",
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]}, height=480,
                      legend={"orientation": "h", "y": -0.2})
    pr.update_layout(title=f"Precision-recall curves (pixels); circles: threshold {threshold:g}",
                     xaxis_title="recall TP/(TP+FN)", yaxis_title="precision TP/(TP+FP)",
                     xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]}, height=480,
                     legend={"orientation": "h", "y": -0.2})
    return roc, pr


__all__ = ["COLOURSCALE", "CURVE_PANELS", "PALETTE", "curves_from_arrays", "data_range", "grid_heatmap",
           "learning_curve_figure", "live_training_figure", "smoothed", "step_losses",
           "operating_point", "palette", "roc_pr_figures", "seed_means", "training_curves_figure"]
