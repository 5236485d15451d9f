"""Train: choose a dataset and settings, launch one run or a grid, follow the queue live."""

from __future__ import annotations

import time

import streamlit as st

from app_shared import cached_dataset
from core import queue
from core.config import AUGMENTATION_LEVELS, BEST_BY, LOSSES, TRAIN_FRACTION_PRESETS, RunConfig, best_epoch
from core.datasets import describe_dataset, get_spec, list_datasets
from core.errors import UNetLabError
from core.estimate import estimate_grid, samples_from_registry
from core.figures import live_training_figure
from core.runs import Registry
from core.study import check_study_name, configs_for_grid, grid_from_config, parse_seeds, record_study
from core.tables import (dataset_choices, evaluation_state, format_count, format_duration, format_score, progress_view,
                         run_labels, worker_state)
from core.user_datasets import damaged_list_message, load_user_datasets, register_user_dataset

DEFAULTS = RunConfig()
#: How the loss picker names the losses (one not listed here shows its config name).
LOSS_NAMES = {"bce": "binary cross-entropy", "bce+dice": "cross-entropy + Dice", "dice": "soft Dice",
              "focal": "focal loss"}


@st.cache_data(show_spinner="Loading the dataset...")
def dataset_facts(name: str, root: str | None) -> dict:
    return describe_dataset(name, root)


@st.cache_data(show_spinner="Augmenting a preview...")
def augmentation_preview(name: str, root: str | None, level: str, patch_size: int, seed: int):
    from core.augment import preview_grid

    sample = cached_dataset(name, root)[0]
    return preview_grid(sample.image, sample.mask, level, n=5, seed=seed, patch_size=patch_size,
                        instances=sample.instances, columns=3)


@st.cache_data
def augmentation_steps(level: str) -> list[str]:
    from core.augment import describe_level

    return describe_level(level)


@st.cache_data(ttl=30, show_spinner=False)
def throughput_samples(registry_path: str) -> list:
    """What this machine's finished runs measured (patches per second, validation and fixed
    seconds), re-read every 30 s."""
    registry = Registry(registry_path)
    runs = registry.list_runs(status="finished")
    return samples_from_registry(runs, {run.id: registry.epochs(run.id) for run in runs})


@st.cache_resource
def default_parallel() -> int:
    return queue.default_parallel()


def set_fraction(value: float) -> None:
    st.session_state["train_fraction"] = value


def register_folder() -> None:
    """Check the folder with the loader; on success select it (a callback may set the picker's state)."""
    try:
        entry = register_user_dataset(st.session_state["folder_layout"], st.session_state["folder_path"])
    except UNetLabError as error:
        st.session_state["folder_error"] = str(error)
    else:
        st.session_state["folder_error"] = ""
        st.session_state["dataset_choice"] = entry.label


st.title("Train")
st.markdown("Runs train in separate processes through a queue, so you can reload this page, open it in "
            "a second tab or close the browser: nothing is lost. An *epoch* is a fixed number of "
            "optimiser steps on random patches, followed by validation on the run's fixed validation part.")

# ---- dataset --------------------------------------------------------------------------------

st.header("1. Dataset")
specs = list_datasets()
folders = load_user_datasets()
if damaged_list_message():
    st.warning(damaged_list_message())
choices = dataset_choices(specs, folders)
labels = [choice.label for choice in choices]
chosen_label = st.selectbox("Dataset", labels, key="dataset_choice",
                            help="Built-in synthetic sets need no files; add your own folder below.")
choice = choices[labels.index(chosen_label)]

with st.expander("Use a folder of your own (or the files of a named dataset)"):
    folder_specs = [spec for spec in specs if spec.needs_root]
    layout_names = [spec.name for spec in folder_specs]
    layout = st.selectbox("Layout of the folder", layout_names,
                          index=layout_names.index("folder") if "folder" in layout_names else 0,
                          format_func=lambda name: f"{name}: {get_spec(name).title}", key="folder_layout")
    st.caption(f"Expected: {get_spec(layout).layout}")
    folder = st.text_input("Folder path on this machine", key="folder_path",
                           placeholder="/data/my-nuclei (holding images/ and masks/)")
    st.button("Check and add this folder", key="register_folder", on_click=register_folder)
    if st.session_state.get("folder_error"):
        st.error(f"This folder cannot be used: {st.session_state['folder_error']}")

try:
    facts = dataset_facts(choice.dataset, choice.root)
except UNetLabError as error:
    st.error(f"{choice.label} does not load: {error}")
    st.stop()
share = facts.get("foreground_fraction")
st.markdown(
    f"**{facts['title']}**: {facts['n_images']} labelled images, sizes "
    f"{', '.join(f'{h}x{w}' for h, w in facts['shapes'][:4])}{' ...' if len(facts['shapes']) > 4 else ''}, "
    f"{facts['channels']} channel(s), positive class *{facts['positive_class']}*"
    + (f" ({share:.1%} of pixels)" if share is not None else "")
    + (f", {facts['n_instances']} objects" if facts.get("n_instances") is not None else "") + "."
)
for warning in facts.get("warnings", []):
    st.warning(f"{choice.label}: {warning}")

# ---- settings -------------------------------------------------------------------------------

st.header("2. Settings")
max_fraction = round(1 - DEFAULTS.validation_fraction, 2)
st.session_state.setdefault("train_fraction", DEFAULTS.train_fraction)
left, right = st.columns([2, 3])
with left:
    fraction = st.slider("Training fraction (share of the labelled images used for training)",
                         min_value=0.05, max_value=max_fraction, step=0.05, key="train_fraction",
                         help=f"The last {DEFAULTS.validation_fraction:.0%} of each seed's fixed order of the "
                              "images is the validation part, never trained on.")
    preset_columns = st.columns(len(TRAIN_FRACTION_PRESETS))
    for column, preset in zip(preset_columns, TRAIN_FRACTION_PRESETS):
        column.button(f"{preset:.0%}", key=f"preset_{preset}", on_click=set_fraction, args=(preset,),
                      width="stretch")
    n_train = -(-int(round(fraction * facts["n_images"] * 1000)) // 1000)
    st.caption(f"{fraction:.0%} of {facts['n_images']} images = about {max(1, n_train)} training images.")
    level = st.selectbox("Augmentation level", AUGMENTATION_LEVELS,
                         index=AUGMENTATION_LEVELS.index(DEFAULTS.augmentation), key="augmentation")
    st.markdown("\n".join(f"- {step}" for step in augmentation_steps(level)) or "- no augmentation")
with right:
    try:
        st.image(augmentation_preview(choice.dataset, choice.root, level, 256, 0),
                 caption=f"First image (top left) and 5 '{level}' augmentations of its centre patch; "
                         "mask outlines in yellow.", width="stretch")
    except UNetLabError as error:
        st.warning(f"No preview: {error}")

columns = st.columns(4)
epochs = columns[0].number_input("Epochs", min_value=1, max_value=1000, value=DEFAULTS.epochs, key="epochs")
width = columns[1].selectbox("Model width (channels of the first level)", [4, 8, 16, 32, 64],
                             index=[4, 8, 16, 32, 64].index(DEFAULTS.base_width), key="base_width")
loss = columns[2].selectbox("Loss", LOSSES, index=LOSSES.index(DEFAULTS.loss), key="loss",
                            format_func=lambda name: LOSS_NAMES.get(name, name))
seeds_text = columns[3].text_input("Seed(s)", value="0", key="seeds",
                                   help="One run per seed, e.g. '0' or '0, 1, 2' or '0-4'. The seed also picks "
                                        "the validation part.")
with st.expander("More settings"):
    more = st.columns(4)
    steps = more[0].number_input("Steps per epoch", 1, 10000, DEFAULTS.steps_per_epoch, key="steps_per_epoch")
    batch = more[1].number_input("Batch size", 1, 256, DEFAULTS.batch_size, key="batch_size")
    patch = more[2].number_input("Patch size (pixels)", 16, 2048, DEFAULTS.patch_size, step=16, key="patch_size")
    depth = more[3].number_input("Depth (poolings)", 1, 6, DEFAULTS.depth, key="depth")
    more = st.columns(4)
    learning_rate = more[0].number_input("Learning rate", 1e-6, 1.0, DEFAULTS.learning_rate, format="%.5f",
                                         key="learning_rate")
    image_size = more[1].number_input("Resize images to N x N (0 = native size)", 0, 4096, 0, step=16,
                                      key="image_size")
    device = more[2].selectbox("Device", ["auto", "cpu", "cuda"], key="device",
                               help="auto: the GPU when there is one, else the CPU")
    parallel = more[3].number_input("Runs trained at once", 1, 16, default_parallel(), key="parallel",
                                    help="1 on the CPU (one run already uses every core); one per GPU otherwise. "
                                         "Applies at the next launch, also to a worker that is already running.")
    more = st.columns(4)
    best_by = more[0].selectbox("Best epoch chosen by", list(BEST_BY), format_func=BEST_BY.get, key="best_by",
                                help="The validation score that picks the checkpoint a run keeps (best.pt). EM "
                                     "membranes: the background's F1; objects: the DSB mAP (post-processes every "
                                     "validation image after each epoch).")
    ema_decay = more[1].number_input("Weight averaging (EMA decay per step, 0 = off)", 0.0, 0.9999,
                                     DEFAULTS.ema_decay, step=0.01, format="%.4f", key="ema_decay",
                                     help="Validate, keep and predict with a moving average of the weights "
                                          "(e.g. 0.99): a smoother validation curve on a few images.")

# ---- launch ---------------------------------------------------------------------------------

st.header("3. Launch")
mode = st.radio("What to launch", ["One run per seed with the settings above",
                                   "A grid: training fractions x augmentation levels x seeds"], key="mode")
grid = mode.startswith("A grid")
if grid:
    grid_columns = st.columns(3)
    fractions = grid_columns[0].multiselect("Training fractions", [0.1, 0.2, 0.3, 0.5, 0.8], default=[0.1, 0.2, 0.5, 0.8],
                                            format_func=lambda f: f"{f:.0%}", key="grid_fractions")
    levels = grid_columns[1].multiselect("Augmentation levels", AUGMENTATION_LEVELS, default=list(AUGMENTATION_LEVELS),
                                         key="grid_levels")
    study = grid_columns[2].text_input("Study name", value=f"grid-{time.strftime('%Y%m%d-%H%M')}", key="study")
else:
    fractions, levels, study = [fraction], [level], None

try:
    seeds = parse_seeds(seeds_text)
    base = RunConfig(dataset=choice.dataset, root=choice.root, epochs=int(epochs), base_width=int(width),
                     loss=loss, steps_per_epoch=int(steps), batch_size=int(batch), patch_size=int(patch),
                     depth=int(depth), learning_rate=float(learning_rate), device=device,
                     image_size=int(image_size) or None, best_by=best_by, ema_decay=float(ema_decay))
    if grid:
        study = check_study_name(study.strip())
    configs = configs_for_grid(base, fractions, levels, seeds, study=study or None)
except UNetLabError as error:
    configs = []
    st.error(str(error))
if configs:
    st.caption(f"{len(configs)} run(s): " + "; ".join(config.label() for config in configs[:6])
               + (" ..." if len(configs) > 6 else ""))
    estimate = estimate_grid(configs, throughput_samples(str(Registry().path)), int(parallel))
    first = estimate.runs[0]
    if estimate.known:
        per_run = sorted({format_duration(run.seconds) for run in estimate.runs})
        st.info(f"**Estimated time on this machine: {format_duration(estimate.wall_seconds)}** for "
                f"{len(configs)} run(s)" + (f" trained {estimate.parallel} at a time" if estimate.parallel > 1 else
                                             " trained one after another")
                + f" ({' to '.join(per_run[:1] + per_run[-1:]) if len(per_run) > 1 else per_run[0]} per run: "
                f"training {format_duration(first.train_seconds)}, validation after each epoch "
                f"{format_duration(first.validation_seconds)}, start and final evaluation "
                f"{format_duration(first.fixed_seconds)}).", icon=":material/schedule:")
        st.caption(f"From measured throughput: {first.basis}.")
    else:
        st.info(f"No time estimate yet: {first.basis}.", icon=":material/schedule:")
if st.button(f"Launch {len(configs)} run(s)", type="primary", disabled=not configs, key="launch"):
    registry = Registry()
    if grid:  # the same kind of study as `python -m core study run`: resumable and reportable there
        record_study(study, grid_from_config(base, fractions, levels, seeds), registry)
    run_ids = queue.enqueue(configs, registry, start_worker=False)
    queue.ensure_worker(registry, max_parallel=int(parallel))
    st.session_state["worker_started_at"] = time.time()
    st.success(f"Queued {len(run_ids)} run(s); they appear below and train one after another.")

# ---- queue ----------------------------------------------------------------------------------

st.header("4. Runs")


# Button callbacks only change state and leave a message: a callback that drew an element (a
# toast) inside the fragment would make Streamlit warn on every Cancel and Resume.
def cancel(run_id: str) -> None:
    try:
        state = queue.cancel(run_id)
        st.session_state["queue_message"] = f"{run_id}: {state}"
    except UNetLabError as error:
        st.session_state["queue_message"] = f"Cannot cancel: {error}"


def resume(run_id: str) -> None:
    try:
        queue.resume(run_id, start_worker=False)
        queue.ensure_worker(max_parallel=int(st.session_state.get("parallel", 1)))
        st.session_state["worker_started_at"] = time.time()
        st.session_state["queue_message"] = f"{run_id}: queued again; it continues from its last finished epoch"
    except UNetLabError as error:
        st.session_state["queue_message"] = f"Cannot resume: {error}"


def start_worker() -> None:
    queue.ensure_worker()
    st.session_state["worker_started_at"] = time.time()


@st.fragment(run_every=2)
def runs_panel() -> None:
    registry = Registry()
    registry.reap_dead()
    runs = registry.list_runs()
    active = [run for run in runs if run.status in ("queued", "running", "evaluating")]
    ended = [run for run in runs if run.status not in ("queued", "running", "evaluating")]
    if st.session_state.get("queue_message"):
        st.toast(st.session_state.pop("queue_message"))
    queued = [run for run in active if run.status == "queued"]
    # A run queued moments ago (here, in another tab or by `study run`) has a worker on its way.
    last_start = max([st.session_state.get("worker_started_at", 0.0), *(run.created for run in queued)], default=None)
    worker = worker_state(len(queued), queue.worker_running(registry), last_start, time.time())
    st.caption(f"{len(active)} queued or running, {len(ended)} ended. Training worker: "
               f"{ {'starting': 'starting (a few seconds)'}.get(worker, worker)}. Updates every 2 s.")
    if worker == "missing":
        st.warning("Runs are queued but no worker serves them.")
        st.button("Start the worker", key="start_worker", on_click=start_worker)
    if not runs:
        st.info("No runs yet: launch one above.")
        return
    show_ended = st.toggle("Show ended runs", value=True, key="show_ended")
    shown = active + (ended[:12] if show_ended else [])
    labels = run_labels(shown)
    for run in shown:
        view = progress_view(run.status, run.progress, run.error)
        with st.container(border=True):
            head, buttons = st.columns([5, 1])
            head.markdown(f"**{labels[run.id]}** &nbsp; `{run.id}` &nbsp; status: **{run.status}**")
            if run.status in ("queued", "running", "evaluating"):
                buttons.button("Cancel", key=f"cancel-{run.id}", on_click=cancel, args=(run.id,))
            elif run.status in ("failed", "cancelled"):
                buttons.button("Resume", key=f"resume-{run.id}", on_click=resume, args=(run.id,))
            st.progress(view.fraction, text=view.text)
            if run.status == "failed" and run.error:
                with st.expander("Error"):
                    st.code(run.error)
            history = registry.epochs(run.id)
            if run.status == "running" and history:
                figure = live_training_figure(history, run.progress, run.config.steps_per_epoch)
                st.plotly_chart(figure, key=f"chart-{run.id}")
                st.caption("Training loss against the optimiser step (each step faint, smoothed bold, where the "
                           "training loop records each step; else the mean so far in each epoch); validation loss "
                           "and pixel F1 (Dice) on the run's validation part after each epoch (step 0: the "
                           "untrained model). Axes keep to the data's range.")
            elif history:
                best = best_epoch(history, run.config.best_by) or history[-1]
                evaluation = evaluation_state(run, registry.get_evaluation(run.id, "val") is not None)
                chosen_by = ("" if run.config.best_by == "val_f1" else
                             f" by its {BEST_BY[run.config.best_by]} ({format_score(best[run.config.best_by])})")
                st.caption(f"Best epoch {best['epoch']} of {history[-1]['epoch']}{chosen_by}: validation pixel F1 "
                           f"(Dice) at threshold {run.config.threshold:g} = {format_score(best['val_f1'])} "
                           f"(TP {format_count(best['val_tp'])}, FP {format_count(best['val_fp'])}, "
                           f"FN {format_count(best['val_fn'])} pixels); untrained model: "
                           f"{format_score(history[0]['val_f1'])}. Full evaluation: {evaluation}.")


runs_panel()
