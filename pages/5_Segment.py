"""Segment: upload an image, pick a trained model, see and download the mask and the instances."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st

from app_shared import cached_model
from core.datasets.base import CONNECTIVITY
from core.datasets.io import MAX_UPLOAD_PIXELS, UPLOAD_SUFFIXES, read_upload
from core.errors import UNetLabError
from core.overlays import (label_overlay, labels_download, labels_file_type, mask_download, mask_overlay,
                           probability_image)
from core.postprocess import METHODS, postprocess, postprocess_parameters
from core.predictions import dataset_kind
from core.runs import Registry
from core.starter import model_choices
from core.segment import compact_labels, preview, preview_float, preview_step


# Few entries: a 64-megapixel upload's arrays are hundreds of MB, and each entry is per image.
@st.cache_data(show_spinner=False, max_entries=2)
def decoded_upload(name: str, data: bytes) -> np.ndarray:
    return read_upload(name, data, as_float=False)


@st.cache_data(show_spinner="Predicting (tiled)...", max_entries=2)
def predicted(checkpoint: str, modified: float, name: str, data: bytes, tile_size: int, flip_tta: bool, scale: str):
    from core.segment import predict_upload  # torch loads only once an image is uploaded

    return predict_upload(cached_model(checkpoint, modified), decoded_upload(name, data), name, tile_size,
                          flip_tta, scale)


@st.cache_data(show_spinner="Post-processing...", max_entries=4)
def instances(probability: np.ndarray, method: str, params: tuple) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    labels = compact_labels(postprocess(probability, method, **dict(params)))
    return labels, time.perf_counter() - started


st.title("Segment")
st.markdown("Upload a PNG, JPEG or TIFF image (8 or 16 bit; grey, RGB or RGBA; any size up to "
            f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels, predicted tile by tile), pick a trained model, "
            "and download the mask and the instance label image.")

registry = Registry()
choices = model_choices(registry.list_runs())
if not choices:
    st.info("No trained model yet. Launch a run on the **Train** page; its best checkpoint appears here "
            "after its first epoch.")
    st.stop()

by_key = {choice.key: choice for choice in choices}
top = st.columns([2, 3])
chosen_key = top[0].selectbox("Model", list(by_key), format_func=lambda key: by_key[key].label, key="segment_run",
                              help="Shipped models work before any training; your runs appear once they have a "
                                   "best checkpoint.")
run = by_key[chosen_key]  # what the settings below read: .config and .checkpoint
# No `type=` filter: Streamlit would refuse other files with an exception; read_upload names the problem.
uploaded = top[1].file_uploader("Image (PNG, JPEG or TIFF)", key="upload",
                                help="8 or 16 bit; grey, RGB or RGBA; " + ", ".join(UPLOAD_SUFFIXES))

with st.sidebar:
    st.header("Segmentation settings")
    threshold = st.slider("Threshold (probability >= threshold is foreground)", 0.01, 0.99,
                          float(run.config.threshold), 0.01, key="segment_threshold")
    method = st.selectbox("Post-processing (instances)", list(METHODS), key="segment_method")
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

if uploaded is None:
    st.info("Upload an image to segment it.")
    st.stop()

checkpoint = run.checkpoint
data = uploaded.getvalue()
try:
    image = decoded_upload(uploaded.name, data)
    prediction = predicted(str(checkpoint), checkpoint.stat().st_mtime, uploaded.name, data, tile_size, flip_tta,
                           scale)
    probability, seconds, tiles = prediction.probability, prediction.seconds, prediction.tiles
    params["connectivity"] = CONNECTIVITY[dataset_kind(run.config.dataset)]
    labels_image, post_seconds = instances(probability, method, tuple(sorted(params.items())))
except (UNetLabError, OSError) as error:
    st.error(f"Cannot segment this image. {error}")
    st.stop()

mask = probability >= threshold
loaded = cached_model(str(checkpoint), checkpoint.stat().st_mtime)
height, width = image.shape[:2]
metrics = st.columns(4)
metrics[0].metric("Objects found", f"{int(labels_image.max()):,}", help=f"instances after '{method}'")
metrics[1].metric("Foreground pixels", f"{mask.mean():.1%}", help=f"probability >= {threshold:g}")
metrics[2].metric("Prediction time", f"{seconds:.2f} s",
                  help=f"{tiles} tile(s) of up to {tile_size} px on {loaded.device.type}, {loaded.precision}")
metrics[3].metric("Post-processing time", f"{post_seconds:.2f} s")
st.caption(f"{uploaded.name}: {width} x {height} pixels, {image.shape[2]} channel(s) "
           f"(model expects {loaded.channels}); {prediction.scale_note}; {run.note} (epoch {loaded.epoch}).")

views = st.columns(3)
shown = preview_float(image)  # what the browser can show; downloads below are full size
views[0].image(label_overlay(shown, preview(labels_image), opacity), caption=f"instances ({method})", width="stretch")
views[1].image(mask_overlay(shown, preview(mask), opacity), caption=f"mask at threshold {threshold:g}", width="stretch")
views[2].image(probability_image(preview(probability)), caption="probability (viridis)", width="stretch")
if shown.shape[:2] != image.shape[:2]:
    st.caption(f"Shown at {shown.shape[1]} x {shown.shape[0]} pixels (every {preview_step(image.shape)}th pixel); "
               "the downloads are full size.")

stem = Path(uploaded.name).stem
downloads = st.columns(2)
# The files are encoded when a button is clicked (a callable), not held with the page: a
# 64-megapixel label image is a file of hundreds of MB.
downloads[0].download_button("Download the mask (PNG, 0/255)", lambda: mask_download(mask),
                             file_name=f"{stem}-mask.png", mime="image/png", key="download_mask")
suffix, mime = labels_file_type(labels_image)
downloads[1].download_button(f"Download the label image ({suffix[1:].upper()}, 0 = background)",
                             lambda: labels_download(labels_image)[0],
                             file_name=f"{stem}-labels{suffix}", mime=mime, key="download_labels")
