"""Compare: the runs table, the training-fraction x augmentation grid, training curves, CSV."""

from __future__ import annotations

import streamlit as st

from app_shared import stored_summary
from core.errors import UNetLabError
from core.figures import grid_heatmap, training_curves_figure
from core.postprocess import METHODS
from core.runs import STATUSES, Registry
from core.tables import (NEGATIVE_CLASS_F1_HELP, comparable_metrics, evaluated_rows, grid_summary,
                         read_results_table, run_labels, runs_table, saved_results_tables)


def show_grid(evaluated, caption_source: str) -> None:
    """The train-fraction x augmentation heatmap of one dataset and one metric."""
    grid_columns = st.columns(2)
    grid_dataset = grid_columns[0].selectbox("Dataset", sorted(set(evaluated["Dataset"])), key="grid_dataset")
    metrics = comparable_metrics(evaluated)
    default_metric = next((m for m in metrics if m.startswith("Pixel F1 (Dice)")), metrics[0])
    metric = grid_columns[1].selectbox("Metric", metrics, index=metrics.index(default_metric), key="grid_metric")
    subset = evaluated[evaluated["Dataset"] == grid_dataset]
    summary = grid_summary(subset, metric)
    st.plotly_chart(grid_heatmap(summary, title=f"{metric} on {grid_dataset}: mean ± sd over seeds"),
                    key="grid_heatmap")
    st.caption(f"Each cell: mean ± sample standard deviation over the seeds of that setting, and n, the number "
               f"of evaluated runs ({len(subset)} in all, validation parts; {caption_source}).")


def column_config(table) -> dict:
    """Percent train fractions; help on the column that is the membrane F1 on EM sets only."""
    config = {"Train fraction": st.column_config.NumberColumn(format="percent")}
    for column in table.columns:
        if column.startswith("Pixel F1 of the negative class"):
            config[column] = st.column_config.NumberColumn(help=NEGATIVE_CLASS_F1_HELP)
    return config


st.title("Compare")
registry = Registry()
registry.reap_dead()
runs = registry.list_runs()
saved_tables = saved_results_tables()
source = st.radio("Show", ["Runs in this registry", "A saved study table (CSV)"], horizontal=True, key="source",
                  captions=[f"{len(runs)} runs in {registry.path}",
                            f"{len(saved_tables)} committed under docs/, or upload one"])

if source == "A saved study table (CSV)":
    st.header("Saved study table")
    picked = st.selectbox("Committed table", list(saved_tables), index=None, key="saved_table",
                          placeholder="Choose a table committed with the project")
    upload = st.file_uploader("... or upload a table saved with `python -m core study table NAME --csv`",
                              type=["csv"], key="table_upload")
    if upload is None and picked is None:
        st.info("Choose a committed study table or upload one.")
        st.stop()
    label, data = (upload.name, upload.getvalue()) if upload is not None else (picked, saved_tables[picked].read_bytes())
    try:
        saved = read_results_table(data, label)
    except UNetLabError as error:
        st.error(str(error))
        st.stop()
    st.dataframe(saved, hide_index=True, width="stretch", column_config=column_config(saved))
    st.caption(f"{label}: {len(saved)} runs as saved when the table was written; training curves, masks and "
               "ROC/PR curves need the run registry itself.")
    st.header("Training fraction x augmentation")
    show_grid(evaluated_rows(saved), f"from {label}")  # read_results_table checked it is not empty
    st.stop()

if not runs:
    st.info("No runs yet. Launch some on the **Train** page; finished runs are evaluated on their "
            "validation part automatically and appear here.")
    st.stop()

# ---- filters and the table ------------------------------------------------------------------

st.header("Runs")
filters = st.columns(4)
datasets = sorted({run.config.dataset for run in runs})
chosen_datasets = filters[0].multiselect("Dataset", datasets, default=datasets, key="filter_datasets")
present = [status for status in STATUSES if any(run.status == status for run in runs)]
chosen_statuses = filters[1].multiselect("Status", present, default=present, key="filter_statuses")
studies = sorted({run.study or "(none)" for run in runs})
chosen_studies = filters[2].multiselect("Study", studies, default=studies, key="filter_studies")
method = filters[3].selectbox("Post-processing for the instance scores", list(METHODS), key="method")

shown = [run for run in runs if run.config.dataset in chosen_datasets and run.status in chosen_statuses
         and (run.study or "(none)") in chosen_studies]
summaries = {run.id: stored_summary(str(registry.path), run.id, run.finished) for run in shown}
table = runs_table(shown, summaries, method=method)
st.caption("Scores are computed on each run's fixed validation part (never trained on) with its best "
           "checkpoint; pixel scores sum TP/FP/FN over the validation images; mAPs are means over images. "
           "Empty cells: the run is not evaluated yet.")
st.dataframe(table, hide_index=True, width="stretch", column_config=column_config(table))
st.download_button("Download this table as CSV", table.to_csv(index=False).encode(),
                   file_name="unetlab-runs.csv", mime="text/csv", key="download_csv")

# ---- the grid -------------------------------------------------------------------------------

st.header("Training fraction x augmentation")
evaluated = evaluated_rows(table)
if evaluated.empty:
    st.info("No evaluated runs among those shown yet.")
else:
    show_grid(evaluated, f"post-processing {method} for instance scores")

# ---- training curves ------------------------------------------------------------------------

st.header("Training curves")
labels = run_labels(shown)
with_epochs = [run.id for run in shown if run.status in ("finished", "running", "evaluating", "failed", "cancelled")]
chosen = st.multiselect("Runs", with_epochs, default=with_epochs[:5], format_func=labels.get, key="curve_runs")
if chosen:
    histories = {labels[run_id]: registry.epochs(run_id) for run_id in chosen}
    st.plotly_chart(training_curves_figure(histories), key="training_curves")
    st.caption("Epoch 0 is the untrained model. Validation scores use each run's threshold and its "
               "validation part.")
