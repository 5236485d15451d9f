"""The home of every plotly figure U-Net Lab draws, and of its one colour palette.

The pages and the study report draw their figures with these functions, so a run, an
augmentation level or a grid cell looks the same everywhere. Line colours come from
:data:`PALETTE` (through :func:`palette`); continuous values use :data:`COLOURSCALE`.
The numbers behind the figures (grid means, operating points) are built in
:mod:`core.tables`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from core.metrics import METRIC_NAMES, PixelCurves
from core.tables import GridSummary, operating_point

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


def grid_heatmap(grid: GridSummary, title: str | None = None) -> go.Figure:
    """Heatmap of the grid means; each cell reads ``mean ± sd`` and ``n = count``."""
    text = []
    for level in grid.mean.index:
        line = []
        for fraction in grid.mean.columns:
            n = int(grid.count.loc[level, fraction])
            mean, sd = grid.mean.loc[level, fraction], grid.sd.loc[level, fraction]
            if n == 0:
                line.append("no runs")
            elif n == 1 or pd.isna(sd):
                line.append(f"{mean:.3f}<br>n = {n}")
            else:
                line.append(f"{mean:.3f} ± {sd:.3f}<br>n = {n}")
        text.append(line)
    figure = go.Figure(go.Heatmap(
        z=grid.mean.to_numpy(dtype=float),
        x=[f"{fraction:.0%}" for fraction in grid.mean.columns],
        y=list(grid.mean.index),
        text=text, texttemplate="%{text}", colorscale=COLOURSCALE,
        colorbar={"title": "mean"},
        hovertemplate="augmentation %{y}, train fraction %{x}<br>%{text}<extra></extra>",
    ))
    figure.update_layout(
        title=title or f"{grid.metric}: mean ± sd over seeds",
        xaxis_title="train fraction", yaxis_title="augmentation level",
        yaxis={"type": "category"}, xaxis={"type": "category"}, height=160 + 70 * max(1, len(grid.mean.index)),
    )
    return figure


# --------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------


def training_curves_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]],
                           panels: Sequence[str] = ("train_loss", "val_loss", "val_f1")) -> go.Figure:
    """Per-epoch curves of several runs overlaid, one panel per metric.

    Parameters
    ----------
    histories : run label -> ``Registry.epochs(run_id)`` (epoch 0 = the untrained model,
        which has no training loss)
    panels : keys of the epoch dicts, each drawn in its own panel
    """
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[CURVE_PANELS.get(p, p) for p in panels])
    for colour, (label, epochs) in zip(palette(len(histories)), histories.items()):
        for column, key in enumerate(panels, start=1):
            points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
            if not points:
                continue
            x, y = zip(*points)
            figure.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, legendgroup=label,
                                        showlegend=column == 1, line={"color": colour}),
                             row=1, col=column)
    figure.update_xaxes(title_text="epoch (0 = untrained)", dtick=1 if _max_epoch(histories) <= 20 else None)
    figure.update_annotations(font_size=13)
    figure.update_layout(height=380, legend={"orientation": "h", "y": -0.25}, margin={"t": 40})
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


__all__ = ["COLOURSCALE", "CURVE_PANELS", "PALETTE", "curves_from_arrays", "grid_heatmap", "operating_point",
           "palette", "roc_pr_figures", "training_curves_figure"]
