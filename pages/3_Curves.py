"""Curves: ROC and precision-recall curves of chosen runs, with the operating point marked."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # lets the page run on its own (streamlit run pages/..., AppTest)
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from core import app_support as support  # noqa: E402
from core.runs import Registry  # noqa: E402


@st.cache_data(show_spinner="Loading the stored curves...", max_entries=200)
def stored_curves(registry_path: str, run_id: str, finished: float | None):
    arrays = Registry(registry_path).evaluation_arrays(run_id, "val")
    return support.curves_from_arrays(arrays)


@st.cache_data(show_spinner=False, max_entries=2000)
def stored_summary(registry_path: str, run_id: str, finished: float | None) -> dict | None:
    return Registry(registry_path).get_evaluation(run_id, "val")


st.title("Curves")
st.markdown("Pixel-level ROC and precision-recall curves over each run's validation part, from the "
            "probability maps of its best checkpoint. Circles mark the operating point at the chosen threshold.")
registry = Registry()
runs = [run for run in registry.list_runs(status="finished")
        if stored_summary(str(registry.path), run.id, run.finished) is not None]
if not runs:
    st.info("No evaluated runs yet. Runs are evaluated automatically when they finish training "
            "(see the **Train** page).")
    st.stop()

labels = support.run_labels(runs)
controls = st.columns([3, 1])
chosen = controls[0].multiselect("Runs", list(labels), default=list(labels)[:4], format_func=labels.get,
                                 key="curve_runs")
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

roc, pr = support.roc_pr_figures(curves, threshold)
left, right = st.columns(2)
left.plotly_chart(roc, key="roc")
right.plotly_chart(pr, key="pr")
st.subheader(f"Operating points at threshold {threshold:g}")
st.dataframe(support.operating_points_table(curves, threshold), hide_index=True, width="stretch")
st.caption("Curves are built from probability histograms; the marked point is the stored curve point for "
           "'probability >= threshold' (its exact threshold is shown, within a histogram bin of the chosen one). "
           "Pixel counts are over the validation images.")
