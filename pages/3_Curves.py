"""Curves: ROC and precision-recall curves of chosen runs, with the operating point marked."""

from __future__ import annotations

import streamlit as st

from app_shared import evaluated_runs, stored_curves, stored_summary
from core.figures import roc_pr_figures
from core.runs import Registry
from core.metrics import METRIC_NAMES
from core.tables import (NO_POSITIVE, display_table, operating_points_table, run_labels, run_settings_table,
                         split_label)

#: Short headers of the operating-point table (the full name is each column's help), so the table
#: fits the page instead of being cut off on the right.
SHORT_HEADERS = {
    "Curve point threshold": "Threshold", "False positive rate": "FPR", "True positive rate (recall)": "TPR (recall)",
    "Precision": "Precision", METRIC_NAMES["roc_auc"]: "ROC-AUC", METRIC_NAMES["average_precision"]: "AP",
    "Positive pixels": "Positive pixels", "Negative pixels": "Negative pixels",
}


st.title("Curves")
st.markdown("Pixel-level ROC and precision-recall curves over each run's validation part, from the "
            "probability maps of its best checkpoint. Circles mark the operating point at the chosen threshold.")
registry = Registry()
runs = evaluated_runs(registry)
if not runs:
    st.info("No evaluated runs yet. Runs are evaluated automatically when they finish training "
            "(see the **Train** page).")
    st.stop()

labels = run_labels(runs)
controls = st.columns([3, 1])
chosen = controls[0].multiselect("Runs", list(labels), default=list(labels)[:4], format_func=labels.get,
                                 key="curve_runs",
                                 help="Labels name what differs between the runs; every setting is in the expander "
                                      "below the curves.")
threshold = controls[1].slider("Threshold (probability >= threshold is positive)", 0.01, 0.99, 0.5, 0.01,
                               key="threshold")
if not chosen:
    st.info("Choose at least one run.")
    st.stop()

curves = {}
for run_id in chosen:
    run = registry.get_run(run_id)
    stored = stored_curves(str(registry.path), run_id, run.finished)
    if stored is None:
        st.warning(f"{labels[run_id]}: its evaluation has no stored curves.")
        continue
    curves[labels[run_id]] = stored
if not curves:
    st.stop()

roc, pr = roc_pr_figures(curves, threshold)
left, right = st.columns(2)
left.plotly_chart(roc, key="roc")
right.plotly_chart(pr, key="pr")
st.subheader(f"Operating points at threshold {threshold:g}")
points = operating_points_table(curves, threshold)
st.dataframe(display_table(points), hide_index=True, width="stretch",
             column_config={"Run": st.column_config.TextColumn("Run", width="medium", pinned=True,
                                                              help="The run (hover a cell for its whole label)"),
                            **{name: st.column_config.Column(short, help=name) for name, short in SHORT_HEADERS.items()}})
if (points["Curve point threshold"] == NO_POSITIVE).any():
    st.caption(f"'{NO_POSITIVE}': no pixel of that run's validation part has a probability at or above "
               f"{threshold:g}, so its curve point is the origin (nothing called positive, precision undefined and "
               "shown as the curve's first stored value).")
st.caption("Computed on: " + "; ".join(
    f"{labels[run_id]}: {split_label(stored_summary(str(registry.path), run_id, registry.get_run(run_id).finished))}"
    for run_id in chosen if stored_summary(str(registry.path), run_id, registry.get_run(run_id).finished)) + ".")
st.caption("Curves are built from probability histograms; the marked point is the stored curve point for "
           "'probability >= threshold' (its exact threshold is shown, within a histogram bin of the chosen one). "
           "Pixel counts are over the validation images.")
with st.expander("Every setting of the runs chosen"):
    st.dataframe(run_settings_table([run for run in runs if run.id in chosen], labels), hide_index=True,
                 width="stretch")
