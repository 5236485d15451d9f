"""Compare: the runs table, the training-fraction x augmentation grid of one setting, paired
comparisons of each level against none, the paper's Table 1 beside ours, training curves, CSV."""

from __future__ import annotations

import streamlit as st

from app_shared import stored_summary
from core.errors import UNetLabError
from core.figures import grid_heatmap, learning_curve_figure, training_curves_figure
from core.report import grid_table, is_membrane_dataset, paper_comparison
from core.runs import STATUSES, Registry
from core.tables import (METHOD_COLUMN, NEGATIVE_CLASS_F1_HELP, OUR_METHOD, NOT_EVALUATED, TRAINING_IMAGES_COLUMN, comparable_metrics,
                         comparisons_table, display_table, evaluated_methods, evaluated_rows, grid_summary, headline_metrics,
                         level_comparisons, read_results_table, run_labels, run_settings_table, runs_table,
                         saved_results_tables, setting_groups, variation_text)

#: The setting choice that shows every setting of the selection, each in its own rows.
ALL_APART = "every setting, each in its own rows"


def show_grid(evaluated, caption_source: str, summaries=None, method: str = "components") -> None:
    """The train-fraction x augmentation heatmap of one dataset, one setting and one metric; then
    each level against none paired by seed, and the paper's Table 1 beside ours."""
    grid_columns = st.columns(2)
    grid_dataset = grid_columns[0].selectbox("Dataset", sorted(set(evaluated["Dataset"])), key="grid_dataset")
    metrics = comparable_metrics(evaluated)
    default_metric = next((m for m in metrics if m.startswith("Pixel F1 (Dice)")), metrics[0])
    metric = grid_columns[1].selectbox("Metric", metrics, index=metrics.index(default_metric), key="grid_metric")
    subset = evaluated[evaluated["Dataset"] == grid_dataset]
    groups = setting_groups(subset)
    varies = variation_text(subset)
    if len(groups) > 1:
        st.caption(f"The runs of {grid_dataset} shown hold {len(groups)} settings ({varies}); runs of different "
                   "settings are never averaged together: choose one, or show each in its own rows.")
        setting = st.selectbox("Setting", [*groups, ALL_APART], key="grid_setting",
                               format_func=lambda label: label if label == ALL_APART
                               else f"{label} ({len(groups[label])} runs)")
        rows = subset if setting == ALL_APART else groups[setting]
    else:
        setting = next(iter(groups))
        rows = subset
    summary = grid_summary(rows, metric)
    zero_to_one = st.checkbox("Fix the colour scale to [0, 1]", value=False, key="grid_zero_to_one",
                              help="By default the colours stretch from the lowest to the highest cell, so a small "
                                   "difference looks large; fixed, a colour means the same score on every grid.")
    best, near, marks_note = None, [], ""
    if setting != ALL_APART:
        try:
            marks = grid_table(rows, grid_dataset, metric, setting if len(groups) > 1 else None)
            best, near = marks.best, [key for key, verdict in marks.verdicts.items() if verdict.within]
            if best is not None:
                marks_note = (f" Outlined: the best cell ({best[0]} at {best[1]:.0%}, highest mean) and, dashed and "
                              f"marked ≈, the {len(near)} cell(s) not distinguishable from it with these seeds (p ≥ "
                              "0.05: paired t-test over the seeds both cells share, Welch's t-test where they share "
                              "fewer than 2; with one seed no cell is marked ≈).")
        except (UNetLabError, KeyError, ValueError):  # no marks rather than no grid
            pass
    st.plotly_chart(grid_heatmap(summary, title=f"{metric} on {grid_dataset}: mean ± sd over seeds", best=best,
                                 near=near, zero_to_one=zero_to_one), key="grid_heatmap")
    st.caption(f"Setting: {setting}. Each cell: mean ± sample standard deviation over the seeds of one setting, "
               f"and n, the number of evaluated runs ({len(rows)} here, validation parts; {caption_source}). "
               + (varies.capitalize() + " in this selection." if varies else "One setting: only the seed differs "
                  "between the runs of a cell.") + marks_note)

    comparisons = level_comparisons(rows, headline_metrics(rows, method, membrane=is_membrane_dataset(grid_dataset)),
                                    summaries, method=method)
    if comparisons:
        st.subheader("Each level against none, paired by seed")
        st.dataframe(display_table(comparisons_table(comparisons)), hide_index=True, width="stretch",
                     column_config={"Train fraction": st.column_config.NumberColumn(format="percent"),
                                    "Sentence": st.column_config.TextColumn(width="large")})
        st.markdown("\n".join(f"- {comparison.sentence()}" for comparison in comparisons))
        st.caption("Runs with the same seed share the split and the initial weights, so each level is compared "
                   "with none seed by seed: paired t-test (Wilcoxon signed-rank where 5 or more seeds differ), "
                   "Holm-adjusted over the comparisons shown, effect size d_z; the bootstrap interval resamples "
                   "seeds, then validation images (per-image scores stored with each evaluation). 'Not "
                   "distinguishable' is about these seeds, not a proof that the levels are equal.")
    paper = paper_comparison(rows, grid_dataset, method)
    if not paper.empty:
        st.subheader("The paper's Table 1 beside ours")
        st.dataframe(display_table(paper), hide_index=True, width="stretch",
                     column_config={"Train fraction": st.column_config.NumberColumn(format="percent")})
        st.caption("Both mAPs are the paper's eq. (4)-(5): TP/(TP+FP) with a match at IoU >= r, mean over "
                   "r = 0.50, 0.55, ..., 1.00 (the Kaggle DSB mAP, IoU > t over 0.50..0.95, is another column of "
                   "the runs table); F1 is our pixel F1 (Dice) at threshold 0.5. The paper trained on all its "
                   "images (its training column); ours are the runs of this setting.")


def column_config(table) -> dict:
    """Percent train fractions, the run and its label pinned while the table scrolls sideways,
    help on the column that is the membrane F1 on EM sets only."""
    config = {"Train fraction": st.column_config.NumberColumn(format="percent"),
              "Run": st.column_config.TextColumn(pinned=True), "Label": st.column_config.TextColumn(pinned=True)}
    for column in table.columns:
        if column.startswith("Pixel F1 of the negative class"):
            config[column] = st.column_config.NumberColumn(help=NEGATIVE_CLASS_F1_HELP)
    return config


@st.cache_data(show_spinner="Counting each run's training images...", max_entries=20)
def training_sizes(registry_path: str, runs: tuple[tuple[str, float | None], ...]) -> dict[str, int]:
    """Run id -> its number of training images (from its split; ``runs`` pairs key the cache)."""
    from core.report import training_set_sizes

    registry = Registry(registry_path)
    return training_set_sizes([registry.get_run(run_id) for run_id, _ in runs])


def show_learning_curve(evaluated, sizes: dict[str, int], method: str) -> None:
    """Validation pixel F1 against each run's number of training images, one series per dataset
    (and folder) and augmentation level; a power law fitted where 3 or more sizes were measured."""
    import pandas as pd

    from core.stats import fit_learning_curve

    rows = evaluated.assign(**{TRAINING_IMAGES_COLUMN: [sizes.get(run_id) for run_id in evaluated["Run"]]})
    rows = rows.dropna(subset=[TRAINING_IMAGES_COLUMN])
    if METHOD_COLUMN in rows.columns:  # another tool's model was not trained on our training images
        rows = rows[rows[METHOD_COLUMN] == OUR_METHOD]
    metric = next((c for c in rows.columns if c.startswith("Pixel F1 (Dice) at threshold")), None)
    if rows.empty or metric is None:
        st.info("No run's training images could be counted (its data is not on this machine).")
        return
    data = rows["Dataset"].astype(str) + rows["Folder"].fillna("").map(lambda f: f" ({f.rsplit('/', 1)[-1]})" if f
                                                                           else "")
    panel = {}
    for (name, level), group in rows.assign(_data=data).groupby(["_data", "Augmentation"], sort=True):
        points = pd.DataFrame({"n": group[TRAINING_IMAGES_COLUMN].astype(float), "score": group[metric].astype(float),
                               "seed": group["Seed"].astype(int)})
        curve = (fit_learning_curve(points["n"], points["score"], points["seed"], ceiling=1.0)
                 if points["n"].nunique() >= 3 else None)
        panel[f"{name}, {level}"] = (points, curve)
    st.plotly_chart(learning_curve_figure({metric: panel}, title="Validation pixel F1 against training images"),
                    key="learning_curve")
    st.caption(f"{len(rows)} evaluated run(s), {len(panel)} series (dataset and augmentation level); each point is "
               "the mean over the runs with that many training images (error bars: 95% t interval over seeds), each "
               "run scored on its own validation part (external models, not trained here, are left out). A power law "
               "a - b n^-c is fitted where 3 or more "
               "training-set sizes were measured. A fine-tuning run on a corrections folder adds a point to its "
               "folder's series.")


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
    st.dataframe(display_table(saved), hide_index=True, width="stretch", column_config=column_config(saved))
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
shown = [run for run in runs if run.config.dataset in chosen_datasets and run.status in chosen_statuses
         and (run.study or "(none)") in chosen_studies]
summaries = {run.id: stored_summary(str(registry.path), run.id, run.finished) for run in shown}
method = filters[3].selectbox("Post-processing for the instance scores", evaluated_methods(summaries), key="method",
                              help="Methods a mask+contour run was also scored with (seeded-watershed) are listed "
                                   "where such a run is shown; runs not scored with a method have empty cells.")
table = runs_table(shown, summaries, method=method)
st.caption("Scores are computed on each run's fixed validation part (never trained on) with its best "
           f"checkpoint; pixel scores sum TP/FP/FN over the validation images; mAPs are means over images. "
           f"'{NOT_EVALUATED}': the run has no stored evaluation yet. Scores have 3 decimals, counts thousands "
           "separators; the table scrolls sideways with the run pinned (the CSV has every column).")
st.dataframe(display_table(table), hide_index=True, width="stretch", column_config=column_config(table))
st.download_button("Download this table as CSV", table.to_csv(index=False).encode(),
                   file_name="unetlab-runs.csv", mime="text/csv", key="download_csv")

# ---- the grid -------------------------------------------------------------------------------

st.header("Training fraction x augmentation")
evaluated = evaluated_rows(table)
if evaluated.empty:
    st.info("No evaluated runs among those shown yet.")
else:
    show_grid(evaluated, f"post-processing {method} for instance scores", summaries, method)

# ---- training curves ------------------------------------------------------------------------

st.header("Training curves")
labels = run_labels(shown)
with_epochs = [run.id for run in shown if run.status in ("finished", "running", "evaluating", "failed", "cancelled")]
chosen = st.multiselect("Runs", with_epochs, default=with_epochs[:5], format_func=labels.get, key="curve_runs",
                        help="Labels name what differs between the runs shown; every setting is in the table below.")
if chosen:
    histories = {labels[run_id]: registry.epochs(run_id) for run_id in chosen}
    st.plotly_chart(training_curves_figure(histories), key="training_curves")
    st.caption("Epoch 0 is the untrained model. Validation scores use each run's threshold and its "
               "validation part.")
    with st.expander("Every setting of the runs chosen"):
        st.dataframe(run_settings_table([run for run in shown if run.id in chosen], labels), hide_index=True,
                     width="stretch", column_config=column_config(table))

# ---- learning curve ---------------------------------------------------------------------------

st.header("Learning curve: score against training images")
if not evaluated.empty:
    sizes = training_sizes(str(registry.path), tuple((run.id, run.finished) for run in shown
                                                     if run.id in set(evaluated["Run"])))
    show_learning_curve(evaluated, sizes, method)
else:
    st.info("No evaluated runs among those shown yet.")
