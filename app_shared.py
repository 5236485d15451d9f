"""What the Streamlit pages share: cached loaders and the choice of evaluated runs.

This is the only module that holds Streamlit helpers; nothing in ``core`` imports it (or
Streamlit). It lives beside ``app.py`` rather than in ``pages/`` because Streamlit runs
every file in ``pages/`` as a page.

Functions cached with ``st.cache_data`` / ``st.cache_resource`` here are cached once for
every page, so moving from Compare to Curves to Masks does not read the same evaluation
or load the same model twice. Loaders that read a run's stored results take the run's
``finished`` time as an argument only to key the cache: a run trained again gets fresh
results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from core.runs import Registry, RunRecord

if TYPE_CHECKING:
    from core.datasets import Dataset
    from core.inference import LoadedModel


# ---- a run's stored evaluation ----------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=2000)
def stored_summary(registry_path: str, run_id: str, finished: float | None) -> dict | None:
    """A run's stored validation evaluation (None if not evaluated)."""
    return Registry(registry_path).get_evaluation(run_id, "val")


@st.cache_data(show_spinner="Loading stored predictions...", max_entries=50)
def stored_maps(registry_path: str, run_id: str, finished: float | None) -> dict[int, np.ndarray]:
    """Dataset index -> stored probability map (float32) of a run's evaluation."""
    arrays = Registry(registry_path).evaluation_arrays(run_id, "val")
    return {int(arrays[f"index_{position}"]): arrays[key].astype(np.float32)
            for key in arrays if key.startswith("probability_")
            for position in [int(key.split("_")[1])] if f"index_{position}" in arrays}


@st.cache_data(show_spinner="Loading stored predictions...", max_entries=50)
def stored_labels(registry_path: str, run_id: str, finished: float | None, method: str) -> dict[int, np.ndarray]:
    """Dataset index -> the instance labels of post-processing ``method`` stored with a run's
    evaluation (at the run's own threshold), for the images whose probability maps it stored."""
    arrays = Registry(registry_path).evaluation_arrays(run_id, "val")
    return {int(arrays[f"index_{position}"]): arrays[key]
            for key in arrays if key.startswith("labels_") and key.endswith(f"_{method}")
            for position in [int(key.split("_")[1])] if f"index_{position}" in arrays}


@st.cache_data(show_spinner="Loading the stored curves...", max_entries=200)
def stored_curves(registry_path: str, run_id: str, finished: float | None) -> Any:
    """A run's stored ROC / precision-recall curves (a PixelCurves), or None."""
    from core.figures import curves_from_arrays

    return curves_from_arrays(Registry(registry_path).evaluation_arrays(run_id, "val"))


def evaluated_runs(registry: Registry) -> list[RunRecord]:
    """The finished runs that have a stored evaluation, newest first (the registry's order)."""
    return [run for run in registry.list_runs(status="finished")
            if stored_summary(str(registry.path), run.id, run.finished) is not None]


# ---- datasets and models ------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the dataset...")
def cached_dataset(name: str, root: str | None, size: int | None = None) -> Dataset:
    """The training split of a dataset (resized to ``size`` x ``size`` when given), loaded once."""
    from core.datasets import load_dataset

    return load_dataset(name, root, split="train", size=size)


@st.cache_resource(show_spinner="Loading the model...", max_entries=8)
def cached_model(checkpoint: str, modified: float) -> LoadedModel:
    """A run's model from a checkpoint file; ``modified`` (its mtime) keys the cache."""
    from core.inference import load_model  # torch loads only when a page needs a model

    return load_model(checkpoint)


# ---- the mask editor: a small canvas component ---------------------------------------------------

#: Longest side of the editor's canvas; larger images are edited at this size and the mask is
#: scaled back to the image's size (nearest neighbour) by ``core.corrections.mask_from_data_url``.
EDITOR_SIDE = 640

_EDITOR_JS = r"""
export default function (component) {
  const { data, setStateValue, parentElement } = component;
  let root = parentElement.querySelector(".mask-editor");
  if (root && root.dataset.key === data.key) { return; }  // same image and mask: keep the strokes
  if (root) { root.remove(); }
  root = document.createElement("div");
  root.className = "mask-editor";
  root.dataset.key = data.key;
  root.innerHTML = `
    <div class="tools">
      <button type="button" class="tool active" data-tool="paint">Paint</button>
      <button type="button" class="tool" data-tool="erase">Erase</button>
      <label>Brush <input type="range" class="brush" min="1" max="40" value="${data.brush}"></label>
      <button type="button" class="reset">Start again</button>
      <button type="button" class="apply">Use this mask</button>
      <span class="note"></span>
    </div>
    <canvas class="view" aria-label="mask editor"></canvas>`;
  parentElement.appendChild(root);
  const view = root.querySelector("canvas.view");
  const width = data.width, height = data.height;
  view.width = width; view.height = height;
  view.style.width = Math.min(width * data.zoom, data.max_css) + "px";
  const mask = document.createElement("canvas"); mask.width = width; mask.height = height;
  const tint = document.createElement("canvas"); tint.width = width; tint.height = height;
  const picture = new Image(), start = new Image();
  let tool = "paint", drawing = false, last = null;
  const note = root.querySelector(".note");
  function redraw() {
    const ctx = view.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, width, height);
    ctx.drawImage(picture, 0, 0, width, height);
    const t = tint.getContext("2d");
    t.globalCompositeOperation = "copy"; t.drawImage(mask, 0, 0);
    t.globalCompositeOperation = "source-in"; t.fillStyle = "rgba(255, 0, 200, 0.45)"; t.fillRect(0, 0, width, height);
    ctx.drawImage(tint, 0, 0);
  }
  function reset() {
    const m = mask.getContext("2d");
    m.globalCompositeOperation = "copy"; m.drawImage(start, 0, 0, width, height);
    m.globalCompositeOperation = "source-over";
    redraw();
  }
  function point(event) {
    const box = view.getBoundingClientRect();
    return [(event.clientX - box.left) * width / box.width, (event.clientY - box.top) * height / box.height];
  }
  function stroke(from, to) {
    const m = mask.getContext("2d");
    const radius = Number(root.querySelector(".brush").value) * width / view.getBoundingClientRect().width;
    m.globalCompositeOperation = tool === "erase" ? "destination-out" : "source-over";
    m.strokeStyle = "white"; m.fillStyle = "white"; m.lineCap = "round"; m.lineWidth = 2 * radius;
    m.beginPath(); m.moveTo(from[0], from[1]); m.lineTo(to[0], to[1]); m.stroke();
    m.beginPath(); m.arc(to[0], to[1], radius, 0, 2 * Math.PI); m.fill();
    redraw();
  }
  view.addEventListener("pointerdown", (e) => { drawing = true; last = point(e); stroke(last, last); });
  view.addEventListener("pointermove", (e) => { if (drawing) { const p = point(e); stroke(last, p); last = p; } });
  for (const name of ["pointerup", "pointerleave"]) { view.addEventListener(name, () => { drawing = false; }); }
  root.querySelectorAll("button.tool").forEach((button) => button.addEventListener("click", () => {
    tool = button.dataset.tool;
    root.querySelectorAll("button.tool").forEach((b) => b.classList.toggle("active", b === button));
  }));
  root.querySelector(".reset").addEventListener("click", reset);
  root.querySelector(".apply").addEventListener("click", () => {
    setStateValue("mask", { key: data.key, url: mask.toDataURL("image/png") });
    note.textContent = "sent";
  });
  let loaded = 0;
  const ready = () => { loaded += 1; if (loaded === 2) { reset(); } };
  picture.onload = ready; start.onload = ready;
  picture.src = data.image; start.src = data.mask;
}
"""

_EDITOR_CSS = """
.mask-editor .tools { display: flex; gap: 0.5rem; align-items: center; flex-wrap: wrap; margin-bottom: 0.4rem;
  font-family: sans-serif; font-size: 0.9rem; }
.mask-editor button { border: 1px solid #999; border-radius: 0.4rem; background: white; padding: 0.2rem 0.7rem;
  cursor: pointer; }
.mask-editor button.active { background: #ff4b4b; color: white; border-color: #ff4b4b; }
.mask-editor button.apply { font-weight: bold; }
.mask-editor canvas.view { image-rendering: pixelated; cursor: crosshair; touch-action: none; border: 1px solid #ccc; }
"""


@st.cache_resource
def _mask_editor_component():
    return st.components.v2.component("unetlab_mask_editor", js=_EDITOR_JS, css=_EDITOR_CSS)


def mask_editor(image_rgb: np.ndarray, mask: np.ndarray, key: str) -> str | None:
    """A canvas to paint and erase a mask over its image; returns the PNG data URL of the mask
    the user sent with "Use this mask" for this image and starting mask (None until then). ``image_rgb`` is uint8 (H, W, 3) of
    the mask's size; both are shown at most :data:`EDITOR_SIDE` pixels a side."""
    import hashlib

    from core.corrections import mask_data_url, png_data_url

    step = max(1, -(-max(mask.shape) // EDITOR_SIDE))
    image_rgb, mask = image_rgb[::step, ::step], mask[::step, ::step]
    image_url, mask_url = png_data_url(image_rgb), mask_data_url(mask)
    digest = hashlib.sha1((image_url + mask_url).encode()).hexdigest()[:16]
    height, width = mask.shape
    result = _mask_editor_component()(
        data={"image": image_url, "mask": mask_url, "key": digest, "width": width, "height": height,
              "zoom": max(1, 512 // max(width, height)), "max_css": 640, "brush": 6},
        key=key, on_mask_change=lambda: None)
    sent = getattr(result, "mask", None)
    # A mask sent for another image (or for the mask before an object edit) is not this one's.
    return sent.get("url") if isinstance(sent, dict) and sent.get("key") == digest else None


# ---- correcting a prediction and fine-tuning on it (the Masks and Segment pages) ---------------


def correction_panel(image: np.ndarray, labels: np.ndarray, stem: str, model_key: str, model_config: Any,
                     model_channels: int, training_pairs: Any = None, prefix: str = "fix",
                     connectivity: int = 2) -> None:
    """Correct a predicted label image, save the pair into a corrections folder and queue a
    fine-tuning run from the current model.

    Parameters
    ----------
    image : the image (native dtype or float in [0, 1], (H, W, C))
    labels : the predicted instances (H, W), 0 = background
    stem : the file stem the pair is saved under
    model_key : the model picker's key (a run id or ``starter:<name>``)
    model_config : the model's RunConfig (the fine-tuning run's settings start from it)
    model_channels : channels the model reads
    training_pairs : a callable returning the model's training (images, masks, names), offered
        as the first content of a new corrections folder; None when they cannot be loaded
    prefix : widget-key prefix (one panel per page)
    connectivity : 1 (4-connected) or 2 (8-connected) for objects painted by hand
    """
    import time as _time

    from core import queue
    from core.corrections import (corrections_folder, delete_objects, fine_tune_config, init_from_name,
                                  mask_from_data_url, merge_objects, object_ids, register_corrections, save_pair,
                                  seed_with_training_images, split_object, with_mask)
    from core.errors import UNetLabError
    from core.overlays import display_rgb, label_overlay

    ids = object_ids(labels)
    st.markdown("Fix the prediction: delete, merge or split objects, then paint missing foreground and erase "
                "false foreground on the canvas (press **Use this mask** to apply the strokes). Save the corrected "
                "pair into a corrections folder (a registered folder dataset) and fine-tune the current model on it.")
    edits = st.columns(3)
    delete = edits[0].multiselect("Delete objects", ids, key=f"{prefix}-delete")
    merge = edits[1].multiselect("Merge objects (into one)", ids, key=f"{prefix}-merge")
    split = edits[2].selectbox("Split an object in two", [None, *ids], key=f"{prefix}-split",
                               format_func=lambda i: "none" if i is None else f"object {i}")
    edited = delete_objects(labels, delete)
    edited = merge_objects(edited, [i for i in merge if i not in delete])
    if split is not None and split not in delete:
        edited = split_object(edited, split)
    rgb = display_rgb(_as_float(image))
    sent = mask_editor(rgb, edited > 0, key=f"{prefix}-editor")
    corrected = edited
    if sent:
        try:
            corrected = with_mask(edited, mask_from_data_url(sent, edited.shape), connectivity)
        except UNetLabError as error:
            st.error(str(error))
    n_before, n_after = len(ids), len(object_ids(corrected))
    st.image(label_overlay(_as_float(image), corrected, 0.5), width=min(512, corrected.shape[1] * 2),
             caption=f"corrected: {n_after:,} objects (predicted {n_before:,}), {int((corrected > 0).sum()):,} "
                     f"foreground pixels (predicted {int((labels > 0).sum()):,})"
                     + ("; painted strokes applied" if sent else "; no strokes applied yet"))
    columns = st.columns([2, 2, 1])
    name = columns[0].text_input("Corrections folder", value=f"corrections-{model_config.dataset}",
                                 key=f"{prefix}-folder",
                                 help="Saved under the cache folder's corrections/ and registered as a folder "
                                      "dataset (it appears on the Train page once it holds 2 pairs).")
    seed = columns[1].checkbox("Start a new folder with the model's training images", value=training_pairs is not None,
                               disabled=training_pairs is None, key=f"{prefix}-seed",
                               help="Fine-tuning then keeps seeing what the model learnt from, plus your corrections.")
    if columns[2].button("Save the corrected pair", key=f"{prefix}-save", type="primary"):
        try:
            if image.shape[2] != model_channels:
                raise UNetLabError(f"{stem}: {image.shape[2]} channel(s) but the model reads {model_channels}")
            folder = corrections_folder(name)
            added = 0
            if seed and training_pairs is not None:
                added = seed_with_training_images(folder, *training_pairs())
            save_pair(folder, f"fix-{stem}", image, corrected)
            st.session_state[f"{prefix}-saved"] = register_corrections(folder)
            st.session_state[f"{prefix}-added"] = added
        except (UNetLabError, OSError) as error:
            st.error(f"Not saved: {error}")
    saved = st.session_state.get(f"{prefix}-saved")
    if saved is None:
        return
    added = st.session_state.get(f"{prefix}-added", 0)
    st.success(f"Saved fix-{stem}: {saved.sentence()}" + (f" ({added} training pair(s) copied in first)" if added else "")
               + ".")
    tune = st.columns([1, 3])
    epochs = tune[0].number_input("Fine-tuning epochs", 1, 1000, min(int(model_config.epochs), 10), key=f"{prefix}-epochs",
                                  help="At most 10 by default: the run starts from the model's weights.")
    init_from = init_from_name(model_key)
    if tune[1].button(f"Fine-tune from {init_from} on {saved.folder.name}", key=f"{prefix}-tune",
                      disabled=not saved.ready):
        try:
            config = fine_tune_config(model_config, init_from, saved.folder, epochs=int(epochs))
            from core.train import check_init_from  # torch loads only when a run is launched here

            check_init_from(config)  # weights that cannot fit the run's network: refused before it is queued
            (run_id,) = queue.enqueue([config], start_worker=False)
            queue.ensure_worker()
            st.session_state["worker_started_at"] = _time.time()
            st.session_state[f"{prefix}-run"] = run_id
        except UNetLabError as error:
            st.error(f"Not queued: {error}")
    if st.session_state.get(f"{prefix}-run"):
        run_id = st.session_state[f"{prefix}-run"]
        status = Registry().get_run(run_id).status
        st.info(f"Fine-tuning run `{run_id}` ({status}): follow it on the **Train** page; once evaluated it is "
                "a point of the learning curve on the **Compare** page and a model on the **Segment** page.")


def _as_float(image: np.ndarray) -> np.ndarray:
    """An image as float32 in [0, 1] (native uint8 / uint16 scaled)."""
    from core.datasets.io import to_float

    return to_float(image) if image.dtype != np.float32 else image


# ---- a run as a bioimage.io model package (the Segment page) ------------------------------------

#: The session-state key of the package built last: (run id, zip bytes, a sentence about it).
PACKAGE_STATE = "bioimageio_package"


def bioimageio_panel(model_key: str, run: RunRecord | None, registry: Registry) -> None:
    """A button that builds a trained run's bioimage.io model package (``core.export.package_zip``)
    on click, with a spinner, then offers the zip for download; never built on a rerun.

    Parameters
    ----------
    model_key : the model picker's key (a run id, or ``starter:<name>`` for a shipped model)
    run : the run's registry record, or None for a shipped model
    registry : the registry the run is in
    """
    from core.runs import is_external

    if run is None:
        st.info("A shipped model is not a run of this registry, so it is not packaged here: train a run (or "
                "fine-tune this model) and package that run. `unetlab export --run RUN_ID` does the same.")
        return
    if is_external(run.config):
        st.info(f"{run.config.extra.get('method')} is another tool's model, scored here by `unetlab evaluate-model`; "
                "its weights are not in this lab, so it is not packaged here (get it from its own source).")
        return
    validate = st.checkbox("Test the package with bioimageio.core as `bioimageio test` does (about twice as long)",
                           value=True, key="bioimageio_validate")
    if st.button("Download as a bioimage.io model (zip)", key="bioimageio_build",
                 help="Writes the run as a bioimage.io model package (spec 0.5: rdf.yaml, PyTorch state dict, "
                      "TorchScript and ONNX weights, a test image and its output) for Fiji (deepImageJ), ilastik, "
                      "BiaPy, QuPath and napari. Takes about a minute with the test, half without."):
        from core.errors import UNetLabError
        from core.export import package_zip  # torch and bioimageio load only when a package is built

        with st.spinner(f"Building the bioimage.io package of run {model_key}..."):
            try:
                data, result = package_zip(model_key, registry, validate=validate)
            except (UNetLabError, OSError, ImportError) as error:
                st.session_state.pop(PACKAGE_STATE, None)
                st.error(f"The package of run {model_key} could not be built: {error}")
                return
        tested = (f"tested by bioimageio.core: {result.validation}" if validate
                  else "not tested (tick the test above to check it)")
        st.session_state[PACKAGE_STATE] = (
            model_key, data, f"{len(data) / 1e6:.1f} MB, {result.rdf.name} with weights "
                             f"{', '.join(result.formats)}; built in {result.seconds:.0f} s, {tested}.")
    package = st.session_state.get(PACKAGE_STATE)
    if package is not None and package[0] == model_key:
        st.download_button("Save the bioimage.io package (zip)", package[1], file_name=f"{model_key}-bioimageio.zip",
                           mime="application/zip", key="bioimageio_download", type="primary")
        st.caption(f"The package of run {model_key}: {package[2]}")
