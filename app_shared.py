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
