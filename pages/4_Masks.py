"""Masks: a validation image with truth, prediction and errors overlaid, the instances of every
post-processing method, and the same image across several runs (the augmentation ablation viewer)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app_shared import (cached_dataset, cached_model, correction_panel, evaluated_runs, stored_labels, stored_maps,
                        stored_summary)
from core.errors import UNetLabError
from core.metrics import metric_name, pixel_counts
from core.overlays import (ERROR_COLOURS, display_rgb, error_overlay, label_overlay, mask_overlay,
                           probability_image)
from core.postprocess import CONTOUR_METHODS, methods_for, postprocess
from core.runs import Registry, is_external
from core.tables import format_count, format_score, run_labels, run_settings_table


@st.cache_data(show_spinner="Predicting...", max_entries=64)
def live_probability(checkpoint: str, modified: float, name: str, root: str | None, size: int | None,
                     index: int) -> np.ndarray:
    from core.inference import predict_image  # torch loads only when a run must be predicted now

    image = cached_dataset(name, root, size)[index].image
    return predict_image(cached_model(checkpoint, modified), image).probability


@st.cache_data(show_spinner="Predicting the outlines...", max_entries=64)
def live_contour(checkpoint: str, modified: float, name: str, root: str | None, size: int | None,
                 index: int) -> np.ndarray | None:
    """The outline probability of a mask+contour model on a dataset image (None for other models)."""
    from core.inference import predict_image

    image = cached_dataset(name, root, size)[index].image
    return predict_image(cached_model(checkpoint, modified), image).contour


@st.cache_data(show_spinner="Post-processing...", max_entries=64)
def instances(probability: np.ndarray, method: str, threshold: float, connectivity: int,
              contour: np.ndarray | None = None) -> np.ndarray:
    return postprocess(probability, method, contour=contour, threshold=threshold, connectivity=connectivity)


@st.cache_data(show_spinner=False, max_entries=200)
def training_indices(name: str, root: str | None, size: int | None, fraction: float, seed: int,
                     validation_fraction: float, strategy: str = "auto", group_pattern: str | None = None) -> list[int]:
    from core.datasets import split

    return list(split(cached_dataset(name, root, size), fraction, seed, validation_fraction, strategy=strategy, group_pattern=group_pattern).train)


st.title("Masks")
registry = Registry()
runs = evaluated_runs(registry)
if not runs:
    st.info("No evaluated runs yet. Runs are evaluated automatically when they finish training "
            "(see the **Train** page).")
    st.stop()

labels = run_labels(runs)
by_id = {run.id: run for run in runs}
top = st.columns([3, 3, 1, 1])
run_id = top[0].selectbox("Run", list(labels), format_func=labels.get, key="mask_run",
                          help="Labels name what differs between the runs; every setting is in the expander below.")
run = by_id[run_id]
with st.expander("Every setting of this run"):
    st.dataframe(run_settings_table([run], labels), hide_index=True, width="stretch")
config = run.config
summary = stored_summary(str(registry.path), run_id, run.finished)
maps = stored_maps(str(registry.path), run_id, run.finished)
if not maps:
    st.warning("This run's evaluation stored no probability maps.")
    st.stop()
dataset = cached_dataset(config.dataset, config.root, config.image_size)
indices = sorted(maps)
index = top[1].selectbox("Validation image", indices, format_func=lambda i: f"{dataset.names[i]} (#{i})",
                         key="mask_image")
threshold = top[2].slider("Threshold", 0.01, 0.99, float(config.threshold), 0.01, key="mask_threshold")
n_validation = int(summary.get("n_images") or len(indices))
if len(indices) < n_validation:
    st.caption(f"{len(indices)} of the run's {n_validation} validation images are offered: the evaluation stores the "
               f"probability maps of its first {len(indices)} only, to keep the registry small (the scores count all "
               f"{n_validation}). `python -m core predict` segments any image, and the Segment page any upload.")
opacity = top[3].slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="mask_opacity")

sample = dataset[index]
probability = maps[index]
prediction = probability >= threshold
counts = pixel_counts(probability, sample.mask, threshold)
made_by = (f"{config.extra['method']}, the model's own output (scored here, not trained here)" if is_external(config)
           else f"best checkpoint, epoch {summary['epoch']}")
st.caption(f"{config.dataset} image {sample.name}: in this run's validation part ({summary['split_description']}); "
           f"{made_by}. Positive class: {summary.get('positive_class', '')}.")
st.markdown(
    f"On this image: {metric_name('pixel_f1', threshold)} = **{format_score(counts.f1)}**; "
    f"{metric_name('pixel_precision', threshold)} = {format_score(counts.precision)}; "
    f"{metric_name('pixel_recall', threshold)} = {format_score(counts.recall)} "
    f"(TP {format_count(counts.tp)}, FP {format_count(counts.fp)}, FN {format_count(counts.fn)}, "
    f"TN {format_count(counts.tn)} pixels)."
)
images = st.columns(4)
images[0].image(display_rgb(sample.image), caption="image", width="stretch")
images[1].image(mask_overlay(sample.image, sample.mask, opacity), caption="truth (yellow)", width="stretch")
images[2].image(probability_image(probability), caption="probability (viridis, 0 dark to 1 yellow)",
                width="stretch")
images[3].image(error_overlay(sample.image, sample.mask, prediction, opacity),
                caption=f"errors at threshold {threshold:g}", width="stretch")
legend = " &nbsp; ".join(f"<span style='color:rgb{colour}'>■</span> {name}"
                         for name, colour in ERROR_COLOURS.items())
st.markdown(legend + " &nbsp; (true negatives: the image)", unsafe_allow_html=True)

st.subheader("Instances of each post-processing method")
truth_labels = sample.instances
methods = methods_for(config.target == "mask+contour")
contour, contour_note = None, ""
if any(method in CONTOUR_METHODS for method in methods):
    # The evaluation stores probability maps, not outline maps: the outlines come from the best checkpoint,
    # else the labels the evaluation stored (at the run's own threshold) are shown.
    try:
        checkpoint = run.best_checkpoint
        contour = live_contour(str(checkpoint), checkpoint.stat().st_mtime, config.dataset, config.root,
                               config.image_size, index)
    except (UNetLabError, OSError):
        contour_note = (f" (its best checkpoint is not here: the labels its evaluation stored, at threshold "
                        f"{config.threshold:g})")
method_columns = st.columns(len(methods) + 1)
if truth_labels is not None:
    method_columns[0].image(label_overlay(sample.image, truth_labels, opacity),
                            caption=f"truth: {int(len(np.unique(truth_labels)) - 1)} objects", width="stretch")
else:
    method_columns[0].info("This dataset has no instance labels.")
for column, method in zip(method_columns[1:], methods):
    if method in CONTOUR_METHODS and contour is None:
        labels_image = stored_labels(str(registry.path), run_id, run.finished, method).get(index)
        if labels_image is None:
            column.info(f"{method}: needs this run's outline map, which is not stored for this image and its best "
                        "checkpoint is not here to predict it.")
            continue
        note = contour_note
    else:
        labels_image, note = instances(probability, method, threshold, dataset.spec.connectivity, contour), ""
    column.image(label_overlay(sample.image, labels_image, opacity),
                 caption=f"{method}: {int(labels_image.max())} objects{note}", width="stretch")
if contour is not None:
    st.caption(f"{', '.join(m for m in methods if m in CONTOUR_METHODS)}: seeds where the foreground is not outline, "
               "grown over the outline probability this mask+contour run predicts (from its best checkpoint).")

# ---- correct the prediction and fine-tune ---------------------------------------------------------

st.header("Correct this prediction and fine-tune")


def training_pairs() -> tuple[list, list, list]:
    """The run's training images, masks (instances where the data has them) and names."""
    train = training_indices(config.dataset, config.root, config.image_size, config.train_fraction, config.seed,
                             config.validation_fraction, config.split_strategy, config.group_pattern)
    samples = [dataset[i] for i in train]
    return ([s.image for s in samples], [s.instances if s.instances is not None else s.mask for s in samples],
            [s.name for s in samples])


if is_external(config):
    st.info(f"{config.extra['method']} is another tool's model, scored here by `unetlab evaluate-model`: its weights "
            "are not in this lab, so it cannot be fine-tuned here. Correct a U-Net run's prediction instead.")
else:
    with st.expander(f"Correct the 'components' instances of {sample.name} at threshold {threshold:g}",
                     expanded=False):
        correction_panel(sample.image, instances(probability, "components", threshold, dataset.spec.connectivity),
                         sample.name, run_id, config, dataset.channels, training_pairs, prefix="masks-fix",
                         connectivity=dataset.spec.connectivity)

# ---- the same image across runs --------------------------------------------------------------

st.header("The same image across runs")
st.markdown("Compare runs on one image, e.g. the same training fraction with different augmentation levels. "
            "Runs that did not store this image are predicted now with their best checkpoint.")
same_data = [other.id for other in runs if other.config.dataset == config.dataset
             and other.config.root == config.root and other.config.image_size == config.image_size]
# An external run has no checkpoint here: it is offered only where its evaluation stored this image.
without_image = [other for other in same_data if is_external(by_id[other].config)
                 and index not in stored_maps(str(registry.path), other, by_id[other].finished)]
if without_image:
    st.caption(f"Not offered for {sample.name}: {', '.join(labels[other] for other in without_image)}. An external "
               "model's weights are not in this lab, so only the images its evaluation stored (its first validation "
               "images) can be shown; choose one of those above to compare it.")
same_data = [other for other in same_data if other not in without_image]
default = [other for other in same_data if by_id[other].config.train_fraction == config.train_fraction][:4]
chosen = st.multiselect("Runs", same_data, default=default, format_func=labels.get, key="ablation_runs")
if chosen:
    columns = st.columns(4)
    for position, other_id in enumerate(chosen):
        other = by_id[other_id]
        other_maps = stored_maps(str(registry.path), other_id, other.finished)
        note = ""
        try:
            if index in other_maps:
                other_probability = other_maps[index]
            else:
                checkpoint = other.best_checkpoint
                other_probability = live_probability(str(checkpoint), checkpoint.stat().st_mtime, config.dataset,
                                                     config.root, config.image_size, index)
                trained_on = training_indices(config.dataset, config.root, config.image_size,
                                              other.config.train_fraction, other.config.seed,
                                              other.config.validation_fraction, other.config.split_strategy, other.config.group_pattern)
                note = " — trained on this image!" if index in trained_on else " — predicted now"
        except (UNetLabError, OSError) as error:
            columns[position % len(columns)].error(f"{labels[other_id]}: {error}")
            continue
        other_counts = pixel_counts(other_probability, sample.mask, threshold)
        columns[position % len(columns)].image(
            error_overlay(sample.image, sample.mask, other_probability >= threshold, opacity),
            caption=f"{labels[other_id]}: pixel F1 {format_score(other_counts.f1)} (TP {format_count(other_counts.tp)}, "
                    f"FP {format_count(other_counts.fp)}, FN {format_count(other_counts.fn)}){note}",
            width="stretch")
