"""Home: what U-Net Lab does, the datasets it knows and the recent runs with their status."""

from __future__ import annotations

import streamlit as st

from core.datasets import list_datasets
from core.queue import worker_running
from core.runs import Registry
from core.tables import datasets_table, status_table
from core.user_datasets import damaged_list_message, load_user_datasets


@st.cache_resource
def training_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} found)"
    return f"CPU ({torch.get_num_threads()} threads); no GPU found"


st.title("U-Net Lab")
st.markdown(
    "Comparison studies of small-data biomedical segmentation with a U-Net. "
    "**Train** runs with a chosen training fraction and augmentation level (one run or a grid, "
    "queued and trained in the background), **Compare** their validation scores, look at "
    "**Curves** (ROC, precision-recall) and **Masks** (errors and instances laid over the images), "
    "and **Segment** images of your own with a trained model."
)
st.caption(f"Training device: {training_device()}. Runs and results are stored in the run registry "
           f"`{Registry().path}`.")

st.header("Datasets")
st.markdown("Built-in synthetic sets need no files; the others (and any folder of images + masks) are "
            "used by registering their folder on the **Train** page.")
folders = load_user_datasets()
if damaged_list_message():
    st.warning(damaged_list_message())
st.dataframe(datasets_table(list_datasets(), folders),
             hide_index=True, width="stretch")


@st.fragment(run_every=3)
def recent_runs() -> None:
    registry = Registry()
    registry.reap_dead()
    runs = registry.list_runs()
    active = sum(run.status in ("queued", "running", "evaluating") for run in runs)
    worker = "running" if worker_running(registry) else "idle (starts when a run is launched)"
    st.markdown(f"**{len(runs)}** run{'' if len(runs) == 1 else 's'} in the registry, **{active}** queued or "
                f"running; training worker: {worker}.")
    if not runs:
        st.info("No runs yet: open the **Train** page to launch one on the built-in `synthetic-nuclei` data.")
        return
    st.dataframe(status_table(runs[:20]), hide_index=True, width="stretch")


st.header("Recent runs")
recent_runs()
