"""External runs (another tool's model scored by ``unetlab evaluate-model``) never pool with ours.

Their method lives in the bookkeeping fields ``extra["method"]`` and ``notes``, yet it is part of
the setting (``core.tables.run_method``): an external run and one of ours with every other field
and the seed equal are two settings in the tables, the Compare grid, the study table and the run
labels. The runs here are made in a registry with stored (fake) evaluations, so nothing is trained.
"""

from __future__ import annotations

import json

import numpy as np

import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.metrics import METRIC_NAMES
from core.paths import PROJECT_ROOT
from core.runs import Registry
from core.tables import (METHOD_COLUMN, OUR_METHOD, SETTING_COLUMN, grid_summary, run_labels, run_method,
                         run_settings_table, runs_table, setting_groups, setting_key, table_settings, varying_fields)
from test_grouping import BASE, cell_value, make_runs

F1 = METRIC_NAMES["pixel_f1"]
#: The bookkeeping an external run carries (as core.external.external_config stores it).
EXTERNAL = {"notes": "external: cellpose", "extra": {"method": "external: cellpose", "external_format": "labels"}}


@pytest.fixture
def ours_and_external():
    """One run of ours (F1 0.70) and one external run (F1 0.90) with the same settings and seed."""
    registry = Registry()
    make_runs(registry, [({}, 0.70), (EXTERNAL, 0.90)])
    return registry


def test_the_method_is_part_of_the_setting():
    ours, external = RunConfig(**BASE), RunConfig(**BASE, **EXTERNAL)
    assert run_method(ours) == OUR_METHOD and run_method(external) == "external: cellpose"
    assert run_method(RunConfig(**BASE, extra={"method": "something else"})) == OUR_METHOD
    assert setting_key(ours) != setting_key(external)
    assert setting_key(external) == setting_key(RunConfig(**{**BASE, "seed": 4}, **EXTERNAL))  # seeds still repeat
    assert varying_fields([ours, external]) == ["method"]
    assert external.label() == "external: cellpose on synthetic-nuclei 50% none s0"
    assert ours.label() == "synthetic-nuclei 50% none s0"


def test_an_external_run_and_ours_are_never_averaged(ours_and_external):
    records = ours_and_external.list_runs()
    table = runs_table(records, {run.id: ours_and_external.get_evaluation(run.id) for run in records})
    assert METHOD_COLUMN in table.columns and sorted(table[METHOD_COLUMN]) == ["U-Net (trained here)",
                                                                             "external: cellpose"]
    assert sorted(table[SETTING_COLUMN]) == ["250 steps (10 epochs x 25), U-Net (trained here)", "external: cellpose"]
    grid = grid_summary(table, F1)
    assert grid.count.to_numpy().ravel().tolist() == [1, 1] and len(grid.settings) == 2
    assert sorted(grid.mean.to_numpy().ravel().tolist()) == pytest.approx([0.70, 0.90])
    assert len(setting_groups(table)) == 2
    # A saved table without its Setting column still tells them apart by its Method column.
    saved = table.drop(columns=[SETTING_COLUMN])
    assert table_settings(saved).nunique() == 2 and grid_summary(saved, F1).count.to_numpy().max() == 1
    # A table read back from CSV (an empty Method cell is ours, never the text "nan").
    from core.tables import read_results_table

    csv = read_results_table(saved.to_csv(index=False).encode(), "t.csv")
    csv.loc[csv[METHOD_COLUMN] == OUR_METHOD, METHOD_COLUMN] = float("nan")
    assert sorted(table_settings(csv)) == ["250 steps (10 epochs x 25), U-Net (trained here)", "external: cellpose"]
    # Labels name the method; the settings table has the column.
    labels = run_labels(records)
    assert sorted(labels.values()) == ["external: cellpose on synthetic-nuclei 50% none s0",
                                       "synthetic-nuclei 50% none s0, U-Net (trained here)"]
    assert METHOD_COLUMN in run_settings_table(records).columns


def test_runs_table_has_no_method_column_without_external_runs():
    registry = Registry()
    make_runs(registry, [({}, 0.70), ({"seed": 1}, 0.72)])
    records = registry.list_runs()
    table = runs_table(records, {run.id: registry.get_evaluation(run.id) for run in records})
    assert METHOD_COLUMN not in table.columns and len(setting_groups(table)) == 1
    assert METHOD_COLUMN not in run_settings_table(records).columns


def test_study_table_keeps_the_external_run_apart(ours_and_external):
    from core.study import study_table

    table = study_table("g", ours_and_external)
    assert table.groupby(SETTING_COLUMN).size().tolist() == [1, 1]
    assert sorted(table[METHOD_COLUMN]) == ["U-Net (trained here)", "external: cellpose"]


def test_compare_page_grid_never_pools_an_external_run(ours_and_external):
    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "2_Compare.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "varies: method" in " ".join(caption.value for caption in at.caption)
    choice = at.selectbox(key="grid_setting")
    assert len(choice.options) == 3  # ours, the external model, and "each in its own rows"
    at.selectbox(key="grid_setting").set_value(choice.options[2]).run()
    apart = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert sorted(cell_value(row[0]) for row in apart["text"]) == ["0.700<br>n = 1", "0.900<br>n = 1"]
    assert all("0.800" not in row[0] for row in apart["text"])


def stored_maps_for(registry: Registry, run_id: str, indices: list[int], shape: tuple[int, int]) -> None:
    """Store fake probability maps of ``indices`` with a run's evaluation, as core.evaluate does."""
    from test_grouping import fake_summary

    arrays = {}
    for position, index in enumerate(indices):
        arrays[f"index_{position}"] = np.array(index)
        arrays[f"probability_{position}"] = np.full(shape, 0.25 + 0.1 * position, dtype=np.float16)
    registry.save_evaluation(run_id, "val", fake_summary(0.7), arrays)


def test_masks_page_offers_an_external_run_only_the_images_it_stored():
    from core.datasets import load_dataset

    shape = load_dataset("synthetic-nuclei", None, split="train")[0].mask.shape
    registry = Registry()
    external, ours = make_runs(registry, [(EXTERNAL, 0.9), ({}, 0.7)])
    stored_maps_for(registry, external, [0, 1], shape)  # its evaluation stored two images; no checkpoint
    stored_maps_for(registry, ours, [0, 1, 2], shape)
    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "4_Masks.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="mask_run").set_value(ours).run()
    at.selectbox(key="mask_image").set_value(2).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    external_label = run_labels(registry.list_runs())[external]
    assert external_label == "external: cellpose on synthetic-nuclei 50% none s0"
    assert external_label not in at.multiselect(key="ablation_runs").options
    assert "Not offered for" in " ".join(caption.value for caption in at.caption)
    at.selectbox(key="mask_image").set_value(0).run()
    assert external_label in at.multiselect(key="ablation_runs").options and not at.error
    # The external run itself: its stored images, no fine-tuning, no error.
    at.selectbox(key="mask_run").set_value(external).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.selectbox(key="mask_image").options) == 2
    assert any("cannot be fine-tuned here" in info.value for info in at.info)
