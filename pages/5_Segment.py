"""Segment: upload images or stacks, pick a trained model (the best one for the kind of image by
default), segment them all, see a gallery, download one zip; correct a result and fine-tune."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import streamlit as st

from app_shared import bioimageio_panel, cached_dataset, cached_model, correction_panel, stored_summary
from core.datasets.base import CONNECTIVITY
from core.datasets.io import MAX_UPLOAD_PIXELS, UPLOAD_SUFFIXES, planar_colour_tiff, upload_plane_choices
from core.datasets.ome import Plane
from core.errors import UNetLabError
from core.overlays import (label_overlay, labels_download, labels_file_type, mask_download, mask_overlay,
                           probability_image)
from core.postprocess import CONTOUR_METHODS, methods_for, postprocess, postprocess_parameters
from core.predictions import dataset_kind
from core.runs import Registry
from core.segment import (SegmentedImage, combined_facts, compact_labels, image_facts, mismatch_warnings,
                          object_areas, objects_table, preview, preview_float, preview_step, read_upload_planes,
                          results_zip)
from core.starter import model_choices
from core.tables import default_model, display_table, format_count, model_facts, model_kinds

#: Training images read to describe a model's data (channels, intensities, object sizes).
FACT_IMAGES = 12


#: How an upload is read: the (axis, index) pairs of the plane chosen in an OME file (index None:
#: every channel), and whether a TIFF's 3 planar colour samples are read as 3 grey planes.
ReadChoice = tuple[tuple[tuple[str, int | None], ...], bool]
#: The picker's name of each OME axis.
AXIS_NAMES = {"c": "Channel", "z": "Z-plane", "t": "Time point"}
AS_RGB, AS_PLANES = "one RGB image", "3 grey planes (a stack)"


# Few entries: a 64-megapixel upload's arrays are hundreds of MB, and each entry is per file.
@st.cache_data(show_spinner=False, max_entries=8)
def decoded_planes(name: str, data: bytes, read: ReadChoice = ((), False)) -> np.ndarray:
    axes, samples_as_planes = dict(read[0]), read[1]
    plane = Plane(channel=axes.get("c"), z=axes.get("z"), t=axes.get("t") or 0) if axes else None
    return read_upload_planes(name, data, plane=plane, samples_as_planes=samples_as_planes)


@st.cache_data(show_spinner=False, max_entries=32)
def plane_choices(name: str, data: bytes) -> dict[str, int]:
    return upload_plane_choices(name, data)


@st.cache_data(show_spinner=False, max_entries=32)
def predicted(checkpoint: str, modified: float, name: str, data: bytes, plane: int, tile_size: int, flip_tta: bool,
              scale: str, read: ReadChoice = ((), False)):
    from core.segment import predict_upload  # torch loads only once an image is uploaded

    return predict_upload(cached_model(checkpoint, modified), decoded_planes(name, data, read)[plane], name, tile_size,
                          flip_tta, scale)


def read_choice(name: str, data: bytes, digest: str) -> ReadChoice:
    """The plane picker of an OME-TIFF or zipped OME-Zarr upload (one selectbox per axis with more
    than one position), or the choice between RGB and 3 grey planes for a planar 3-sample TIFF."""
    choices = plane_choices(name, data)
    if choices:
        columns = st.columns(len(choices))
        picked = {}
        for column, (axis, size) in zip(columns, choices.items()):
            options = ([None] if axis == "c" and size == 3 else []) + list(range(size))
            picked[axis] = column.selectbox(
                f"{AXIS_NAMES.get(axis, axis)} of {name} ({size})", options, key=f"axis-{axis}-{name}-{digest}",
                format_func=lambda i: "all 3 (as RGB)" if i is None else str(i))
        return tuple(sorted(picked.items())), False
    if planar_colour_tiff(data):
        how = st.radio(f"{name} holds 3 planes stored as the colour samples of one image: read it as", [AS_RGB, AS_PLANES],
                       horizontal=True, key=f"samples-{name}-{digest}")
        return (), how == AS_PLANES
    return (), False


@st.cache_data(show_spinner=False, max_entries=32)
def instances(probability: np.ndarray, method: str, params: tuple,
              contour: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Instance labels of a probability map (the outline map too, for a mask+contour model) and
    the seconds they took."""
    started = time.perf_counter()
    labels = compact_labels(postprocess(probability, method, contour=contour, **dict(params)))
    return labels, time.perf_counter() - started


@st.cache_data(show_spinner="Reading the model's training images...", max_entries=16)
def training_facts(dataset: str, root: str | None, size: int | None, fraction: float, seed: int,
                   validation_fraction: float, strategy: str, group_pattern: str | None):
    """Channels, intensity range and object sizes of (up to FACT_IMAGES of) a model's training images."""
    from core.datasets import split

    data = cached_dataset(dataset, root, size)
    train = split(data, fraction, seed, validation_fraction, strategy=strategy, group_pattern=group_pattern).train
    samples = [data[i] for i in list(train)[:FACT_IMAGES]]
    return combined_facts([image_facts(s.image, s.instances, s.mask) for s in samples])


def facts_of_model(config) -> object | None:
    """The training-image facts of a model, or None where its data is not on this machine."""
    from core.paths import shared_data_dir

    root = config.root
    if root is None and config.dataset not in ("synthetic-nuclei", "synthetic-membranes", "synthetic-mitochondria"):
        shared = shared_data_dir()
        root = str(shared / config.dataset) if shared is not None and (shared / config.dataset).is_dir() else None
        if root is None:
            return None
    try:
        return training_facts(config.dataset, root, config.image_size, config.train_fraction, config.seed,
                              config.validation_fraction, config.split_strategy, config.group_pattern)
    except (UNetLabError, OSError):
        return None


def positive_class(dataset: str) -> str:
    from core.datasets import get_spec

    try:
        return get_spec(dataset).positive_class
    except UNetLabError:
        return dataset


st.title("Segment")
st.markdown("Upload PNG, JPEG or TIFF images, TIFF stacks, OME-TIFF files or zipped OME-Zarr images (a plane "
            "picker per channel, z and time axis; 8 or 16 bit; grey, RGB or RGBA; any size up to "
            f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels each, predicted tile by tile), pick a trained model, and "
            "download the masks, label images and object counts of them all as one zip.")

registry = Registry()
runs = registry.list_runs()
choices = model_choices(runs)
if not choices:
    st.info("No trained model yet. Launch a run on the **Train** page; its best checkpoint appears here "
            "after its first epoch.")
    st.stop()

by_key = {choice.key: choice for choice in choices}
runs_by_id = {run.id: run for run in runs}
summaries = {choice.key: stored_summary(str(registry.path), choice.key, runs_by_id[choice.key].finished)
             for choice in choices if choice.key in runs_by_id}
kinds = model_kinds(choices, positive_class)
facts = {fact.key: fact for fact in model_facts(choices, runs_by_id, summaries, kinds)}
kind_options = sorted(set(kinds.values()), key=lambda kind: (kind != "nucleus", kind))


def pick_best_for_kind() -> None:
    """A new kind of image selects the best evaluated model for it (a callback may set the picker)."""
    st.session_state["segment_run"] = default_model(list(facts.values()), st.session_state["segment_kind"])


top = st.columns([1, 3])
kind = top[0].selectbox("Kind of image (what is segmented)", kind_options, key="segment_kind",
                        on_change=pick_best_for_kind)
best_key = default_model(list(facts.values()), kind)
keys = list(by_key)
if st.session_state.get("segment_run") not in by_key:
    st.session_state["segment_run"] = best_key
chosen_key = top[1].selectbox("Model", keys, format_func=lambda key: facts[key].picker_label(), key="segment_run",
                              help="By default the best evaluated model for the kind of image (highest validation "
                                   "pixel F1; a shipped model counts with its own validation images). Shipped models "
                                   "work before any training; your runs appear once they have a best checkpoint.")
run = by_key[chosen_key]  # what the settings below read: .config and .checkpoint
st.caption(f"Default for '{kind}': {facts[best_key].label}. Chosen: {run.note}.")
with st.expander("Use this model in Fiji, ilastik, QuPath or napari: a bioimage.io model package"):
    bioimageio_panel(chosen_key, runs_by_id.get(chosen_key), registry)
# No `type=` filter: Streamlit would refuse other files with an exception; read_upload names the problem.
uploads = st.file_uploader("Images or TIFF stacks (PNG, JPEG or TIFF)", key="upload", accept_multiple_files=True,
                           help="Several files at once; a TIFF stack's planes are offered one by one. 8 or 16 bit; "
                                "grey, RGB or RGBA; " + ", ".join(UPLOAD_SUFFIXES))

with st.sidebar:
    st.header("Segmentation settings")
    threshold = st.slider("Threshold (probability >= threshold is foreground)", 0.01, 0.99,
                          float(run.config.threshold), 0.01, key="segment_threshold")
    has_contour = run.config.target == "mask+contour"
    method = st.selectbox("Post-processing (instances)", methods_for(has_contour), key="segment_method",
                          help="A model trained with target mask+contour also predicts object outlines, which "
                               f"{', '.join(CONTOUR_METHODS)} grows its seeds over; the other models offer the rest.")
    params: dict = {"threshold": threshold}
    for parameter in postprocess_parameters(method):
        name, default = parameter["name"], parameter["default"]
        label, key = name.replace("_", " "), f"param-{method}-{name}"
        if isinstance(default, bool):
            params[name] = st.checkbox(label, default, key=key)
        elif isinstance(default, int):
            params[name] = int(st.number_input(label, 0, 100000, default, key=key))
        else:
            params[name] = float(st.number_input(label, 0.0, 1000.0, float(default), key=key))
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="segment_opacity")
    tile_size = int(st.number_input("Tile size (pixels)", 64, 4096, int(run.config.tile_size), step=64,
                                    key="segment_tile"))
    flip_tta = st.checkbox("Average over flips (4x slower)", False, key="segment_tta")
    trained_size = run.config.image_size
    scale = "training"
    if trained_size:
        native = st.checkbox(f"Segment at the image's own size (the model was trained on images resized to "
                             f"{trained_size} x {trained_size}; by default each upload is resized to that size, "
                             "segmented, and the result resized back)", False, key="segment_native")
        scale = "native" if native else "training"

if not uploads:
    st.info("Upload an image (or several, or a stack) to segment it.")
    st.stop()

# ---- what to segment: every file, and the chosen planes of each stack ---------------------------

# (file name, bytes, how it is read, plane, plane shown or None)
items: list[tuple[str, bytes, ReadChoice, int, int | None]] = []
for upload in uploads:
    data = upload.getvalue()
    digest = hashlib.sha1(data).hexdigest()[:10]
    try:
        read = read_choice(upload.name, data, digest)
        planes = decoded_planes(upload.name, data, read)
    except (UNetLabError, OSError) as error:
        st.error(f"Cannot segment {upload.name}. {error}")
        continue
    if len(planes) == 1:
        items.append((upload.name, data, read, 0, None))
        continue
    chosen = st.multiselect(f"Planes of the stack {upload.name} ({len(planes)} planes of "
                            f"{planes.shape[2]} x {planes.shape[1]} pixels)", list(range(len(planes))),
                            default=list(range(len(planes))), key=f"planes-{upload.name}-{digest}",
                            format_func=lambda plane: f"plane {plane}")
    items += [(upload.name, data, read, plane, plane) for plane in chosen]
if not items:
    st.stop()

checkpoint = run.checkpoint
modified = checkpoint.stat().st_mtime
params["connectivity"] = CONNECTIVITY[dataset_kind(run.config.dataset)]
results: list[SegmentedImage] = []
probabilities, predictions = [], []
bar = st.progress(0.0, text=f"Segmenting {len(items)} image(s)...") if len(items) > 1 else None
for number, (name, data, read, plane, shown_plane) in enumerate(items, start=1):
    try:
        prediction = predicted(str(checkpoint), modified, name, data, plane, tile_size, flip_tta, scale, read)
        labels_image, post_seconds = instances(prediction.probability, method, tuple(sorted(params.items())),
                                               prediction.contour)
    except (UNetLabError, OSError) as error:
        st.error(f"Cannot segment {name}{'' if shown_plane is None else f' plane {shown_plane}'}. {error}")
        continue
    results.append(SegmentedImage(name, shown_plane, prediction.probability >= threshold, labels_image,
                                  prediction.seconds + post_seconds))
    probabilities.append(prediction)
    predictions.append((name, data, read, plane))
    if bar is not None:
        bar.progress(number / len(items), text=f"Segmented {number} of {len(items)}: {name}"
                     + ("" if shown_plane is None else f" plane {shown_plane}"))
if not results:
    st.stop()

note = (f"Model: {run.note} ({facts[chosen_key].picker_label()}); threshold {threshold:g}; post-processing "
        f"'{method}'; {len(results)} image(s).")
# ---- all images: gallery, table, one zip ------------------------------------------------------------

if len(results) > 1:
    st.header(f"{len(results)} images")
    total_seconds = sum(result.seconds for result in results)
    st.caption(f"Segmented in {total_seconds:.2f} s (prediction + post-processing, cached results count as "
               f"computed). Objects: '{method}' instances at threshold {threshold:g}.")
    gallery = st.columns(4)
    for position, (result, (name, data, read, plane)) in enumerate(zip(results, predictions)):
        image = preview_float(decoded_planes(name, data, read)[plane], 384)
        gallery[position % 4].image(label_overlay(image, preview(result.labels, 384), opacity), width="stretch",
                                    caption=f"{result.stem}: {format_count(object_areas(result.labels).size)} objects")
table = objects_table(results)
st.dataframe(display_table(table, missing="no objects"), hide_index=True, width="stretch",
             column_config={"Foreground share": st.column_config.NumberColumn(format="percent")})
st.download_button(f"Download all as one zip ({len(results)} image(s): masks, label images, objects.csv)",
                   lambda: results_zip(results, note), file_name="unetlab-segmentation.zip",
                   mime="application/zip", key="download_zip", type="primary")
st.caption("The zip holds masks/ (PNG, 0/255), labels/ (16-bit PNG, 0 = background), objects.csv (per image: "
           "objects, foreground pixels, object areas in pixels) and object_areas.csv (one row per object).")

# ---- one image in detail ------------------------------------------------------------------------------

position = 0
if len(results) > 1:
    st.header("One image in detail")
    position = st.selectbox("Image", range(len(results)), format_func=lambda i: results[i].stem, key="segment_detail")
result, prediction = results[position], probabilities[position]
name, data, read, plane = predictions[position]
image = decoded_planes(name, data, read)[plane]
probability, seconds, tiles = prediction.probability, prediction.seconds, prediction.tiles
labels_image, mask = result.labels, result.mask
loaded = cached_model(str(checkpoint), modified)
height, width = image.shape[:2]
metrics = st.columns(4)
metrics[0].metric("Objects found", format_count(object_areas(labels_image).size),
                  help=f"instances after '{method}'")
metrics[1].metric("Foreground pixels", f"{mask.mean():.1%}", help=f"probability >= {threshold:g}")
metrics[2].metric("Prediction time", f"{seconds:.2f} s",
                  help=f"{tiles} tile(s) of up to {tile_size} px on {loaded.device.type}, {loaded.precision}")
metrics[3].metric("Post-processing time", f"{result.seconds - seconds:.2f} s")
ome_plane = ", ".join(f"{AXIS_NAMES.get(axis, axis).lower()} {'all' if index is None else index}"
                      for axis, index in read[0])
st.caption(f"{name}{'' if result.plane is None else f' plane {result.plane}'}{f' ({ome_plane})' if ome_plane else ''}: "
           f"{width} x {height} pixels, "
           f"{image.shape[2]} channel(s) (model expects {loaded.channels}); {prediction.scale_note}; {run.note} "
           f"(epoch {loaded.epoch}).")
trained = facts_of_model(run.config)
if trained is not None:
    differences = mismatch_warnings(trained, image_facts(image, labels_image, mask))
    if differences:
        st.warning("This image differs clearly from the images the model was trained on, so its result deserves "
                   "a careful look (or choose another model): " + "; ".join(differences) + ".",
                   icon=":material/warning:")

views = st.columns(3)
shown = preview_float(image)  # what the browser can show; downloads below are full size
views[0].image(label_overlay(shown, preview(labels_image), opacity), caption=f"instances ({method})", width="stretch")
views[1].image(mask_overlay(shown, preview(mask), opacity), caption=f"mask at threshold {threshold:g}", width="stretch")
views[2].image(probability_image(preview(probability)), caption="probability (viridis)", width="stretch")
if shown.shape[:2] != image.shape[:2]:
    st.caption(f"Shown at {shown.shape[1]} x {shown.shape[0]} pixels (every {preview_step(image.shape)}th pixel); "
               "the downloads are full size.")

stem = result.stem
downloads = st.columns(2)
# The files are encoded when a button is clicked (a callable), not held with the page: a
# 64-megapixel label image is a file of hundreds of MB.
downloads[0].download_button("Download the mask (PNG, 0/255)", lambda: mask_download(mask),
                             file_name=f"{stem}-mask.png", mime="image/png", key="download_mask")
suffix, mime = labels_file_type(labels_image)
downloads[1].download_button(f"Download the label image ({suffix[1:].upper()}, 0 = background)",
                             lambda: labels_download(labels_image)[0],
                             file_name=f"{stem}-labels{suffix}", mime=mime, key="download_labels")

# ---- correct and fine-tune ----------------------------------------------------------------------------

st.header("Correct this result and fine-tune")
if max(image.shape[:2]) > 2048:
    st.info("Correcting is offered for images up to 2048 pixels a side; crop this one first.")
else:
    pairs = None
    if chosen_key in runs_by_id:
        config = run.config

        def pairs():
            from core.datasets import split

            data_set = cached_dataset(config.dataset, config.root, config.image_size)
            train = split(data_set, config.train_fraction, config.seed, config.validation_fraction,
                          strategy=config.split_strategy, group_pattern=config.group_pattern).train
            samples = [data_set[i] for i in train]
            return ([s.image for s in samples], [s.instances if s.instances is not None else s.mask for s in samples],
                    [s.name for s in samples])
    with st.expander(f"Correct the '{method}' objects of {stem}", expanded=False):
        correction_panel(image, labels_image, Path(stem).name, chosen_key, run.config, loaded.channels, pairs,
                         prefix="segment-fix", connectivity=params["connectivity"])
