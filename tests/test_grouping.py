"""One rule for "the same setting except the seed", used everywhere runs are grouped.

Runs that differ in anything but the seed and bookkeeping (study, notes, extra, device,
threads) are different settings: the Compare grid, the study table, the report's grids and
comparisons and the Compare page must never average them together. The runs here are made in
a registry with stored (fake) evaluations, so nothing is trained.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.config import RunConfig
from core.errors import UNetLabError
from core.metrics import METRIC_NAMES
from core.paths import PROJECT_ROOT
from core.runs import Registry
from core.tables import (BOOKKEEPING_FIELDS, SETTING_COLUMN, grid_summary, runs_table, setting_groups, setting_key,
                         setting_label, table_settings, variation_text, varying_fields)

F1 = METRIC_NAMES["pixel_f1"]
BASE = dict(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="none", steps_per_epoch=25, study="g")



def cell_value(text: str) -> str:
    """A heatmap cell's text without the best / not-distinguishable marks."""
    return re.sub(r"</?b>|<br>(≈ )?best", "", text)

def fake_summary(f1: float, names=("a", "b", "c")) -> dict:
    """A stored evaluation as core.evaluate writes it, with per-image rows."""
    return {
        "split": "val", "split_description": "random split", "n_images": len(names), "epoch": 1,
        "pixel": {"tp": 80, "fp": 20, "fn": 20, "tn": 880, "precision": 0.8, "recall": 0.8, "f1": f1, "iou": 0.667,
                  "accuracy": 0.96, "f1_all_positive": 0.18, "f1_negative": 0.98, "prevalence": 0.1},
        "curves": {"roc_auc": 0.95, "average_precision": 0.9, "n_positive": 100, "n_negative": 900},
        "instances": {"components": {"dsb_map": f1 - 0.25, "paper_map": f1 - 0.15, "ap50": 0.7, "tp50": 7, "fp50": 1,
                                     "fn50": 2, "precision50": 0.8, "recall50": 0.7, "f1_50": 0.75,
                                     "mean_matched_iou": 0.8, "n_truth": 9, "n_predicted": 8}},
        "per_image": [{"name": name, "pixel_f1": f1 + 0.01 * k, "dsb_map[components]": f1 - 0.25}
                      for k, name in enumerate(names)],
        "seconds": 1.0,
    }


def make_runs(registry: Registry, runs: list[tuple[dict, float]]) -> list[str]:
    """Finished, evaluated runs: (config overrides, pixel F1) each."""
    ids = []
    for overrides, f1 in runs:
        run_id = registry.create_run(RunConfig(**{**BASE, **overrides}), status="running")
        registry.set_status(run_id, "finished")
        registry.save_evaluation(run_id, "val", fake_summary(f1))
        ids.append(run_id)
    return ids


@pytest.fixture
def epochs_apart():
    """Two runs of the same cell and seed that differ only in their epochs (3 and 6)."""
    registry = Registry()
    make_runs(registry, [({"epochs": 3}, 0.70), ({"epochs": 6}, 0.90)])
    return registry


# ---- the rule ------------------------------------------------------------------------------


def test_the_seed_and_bookkeeping_do_not_make_a_setting_but_every_other_field_does():
    base = RunConfig(**BASE)
    same = RunConfig(**{**BASE, "seed": 3, "study": "other", "notes": "x", "device": "cpu", "threads": 2,
                        "extra": {"newer": 1}})
    assert setting_key(base) == setting_key(same)
    assert set(BOOKKEEPING_FIELDS) == {"study", "notes", "extra", "device", "threads"}
    for field, value in (("epochs", 6), ("precision", "fp32"), ("learning_rate", 3e-3), ("early_stopping_patience", 5),
                         ("train_fraction", 0.2), ("augmentation", "heavy"), ("base_width", 32)):
        assert setting_key(RunConfig(**{**BASE, field: value})) != setting_key(base), field
    configs = [base, same, RunConfig(**{**BASE, "epochs": 6})]
    assert varying_fields(configs) == ["epochs"]
    assert varying_fields(configs, exclude=["epochs"]) == []
    assert setting_label(configs[2], ["epochs"]) == "150 steps (6 epochs x 25)"
    assert setting_label(RunConfig(**{**BASE, "early_stopping_patience": 4, "learning_rate": 0.003}),
                         ["learning_rate"]) == "at most 250 steps (10 epochs x 25), patience 4, learning rate 0.003"


def test_runs_differing_only_in_epochs_are_never_pooled_in_the_grid(epochs_apart):
    records = epochs_apart.list_runs()
    table = runs_table(records, {run.id: epochs_apart.get_evaluation(run.id) for run in records})
    assert sorted(table[SETTING_COLUMN]) == ["150 steps (6 epochs x 25)", "75 steps (3 epochs x 25)"]
    grid = grid_summary(table, F1)
    assert grid.count.to_numpy().ravel().tolist() == [1, 1]  # one run per cell, never one cell of 2
    assert sorted(grid.mean.to_numpy().ravel().tolist()) == pytest.approx([0.70, 0.90])
    assert 0.80 not in [round(v, 6) for v in grid.mean.to_numpy().ravel()]  # their mean appears nowhere
    assert all(label.startswith("none | ") for label in grid.mean.index) and len(grid.settings) == 2
    assert variation_text(table) == "varies: epochs (3, 6)"
    # The same rule from a saved table without a Setting column (its setting columns tell them apart).
    saved = table.drop(columns=[SETTING_COLUMN])
    assert table_settings(saved).nunique() == 2 and grid_summary(saved, F1).count.to_numpy().max() == 1
    # Each setting on its own is an ordinary grid.
    for label, rows in setting_groups(table).items():
        single = grid_summary(rows, F1)
        assert list(single.mean.index) == ["none"] and single.count.iloc[0, 0] == 1 and single.settings == ()


def test_seeds_of_one_setting_are_grouped_and_other_settings_kept_apart():
    registry = Registry()
    make_runs(registry, [({"epochs": 3, "seed": 0}, 0.70), ({"epochs": 3, "seed": 1, "device": "cpu"}, 0.72),
                         ({"epochs": 6, "seed": 0}, 0.90)])
    records = registry.list_runs()
    table = runs_table(records, {run.id: registry.get_evaluation(run.id) for run in records})
    groups = setting_groups(table)
    assert [len(rows) for rows in groups.values()] == [2, 1]  # the two seeds (device is bookkeeping) together
    grid = grid_summary(table, F1)
    assert sorted(grid.count.to_numpy().ravel().tolist()) == [1, 2]
    assert grid.mean.loc["none | 75 steps (3 epochs x 25)"].iloc[0] == pytest.approx(0.71)


def test_study_table_and_report_keep_the_settings_apart(epochs_apart, tmp_path):
    from core.report import build_report, grid_table
    from core.study import study_table

    table = study_table("g", epochs_apart)
    assert table.groupby(SETTING_COLUMN).size().tolist() == [1, 1]
    assert set(table["Epochs"]) == {3, 6}
    with pytest.raises(UNetLabError, match="2 settings"):
        grid_table(table, "synthetic-nuclei", F1)  # no setting named: refused rather than pooled
    for label in table[SETTING_COLUMN]:
        grid = grid_table(table, "synthetic-nuclei", F1, setting=label)
        assert [cell.n for cell in grid.cells.values()] == [1]

    files = build_report("g", tmp_path / "report", epochs_apart)
    summary = files.markdown.read_text()
    assert "varies: epochs (3, 6)" in summary
    assert "setting: 75 steps (3 epochs x 25)" in summary and "setting: 150 steps (6 epochs x 25)" in summary
    assert "0.7000 (n=1)" in summary and "0.9000 (n=1)" in summary
    assert "0.8000" not in summary and "(n=2)" not in summary
    saved = pd.read_csv(files.table)
    assert sorted(saved[SETTING_COLUMN]) == sorted(table[SETTING_COLUMN])


def test_compare_page_shows_one_setting_at_a_time_and_names_what_varies(epochs_apart):
    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "2_Compare.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = " ".join(caption.value for caption in at.caption)
    assert "varies: epochs (3, 6)" in captions
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert [cell for row in heatmap["text"] for cell in row] == [heatmap["text"][0][0]]  # one cell: one setting
    assert cell_value(heatmap["text"][0][0]) == "0.700<br>n = 1" or cell_value(heatmap["text"][0][0]) == "0.900<br>n = 1"
    choice = at.selectbox(key="grid_setting")
    assert len(choice.options) == 3  # the two settings and "each in its own rows"
    first = cell_value(heatmap["text"][0][0])
    choice.set_value(choice.options[1]).run()
    other = cell_value(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["text"][0][0])
    assert {first, other} == {"0.700<br>n = 1", "0.900<br>n = 1"}
    at.selectbox(key="grid_setting").set_value(choice.options[2]).run()
    apart = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert len(apart["y"]) == 2 and sorted(cell_value(row[0]) for row in apart["text"]) == ["0.700<br>n = 1",
                                                                                           "0.900<br>n = 1"]
    assert all("0.800" not in row[0] for row in apart["text"])
