"""Tests of core.tables: the runs, status, grid, operating-point and saved study tables and their text."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from core import tables
from core.config import RunConfig
from core.errors import UNetLabError
from core.metrics import METRIC_NAMES
from core.runs import RunRecord
from helpers import curves_of, grid_table


def record(run_id: str = "r1", status: str = "finished", **config) -> RunRecord:
    return RunRecord(id=run_id, config=RunConfig(**config), status=status, created=time.time(), started=None,
                     finished=None, error=None, pid=None, checkpoint_dir=Path("/nonexistent") / run_id, study=None)


def summary(f1: float = 0.8, dsb: float = 0.6) -> dict:
    return {
        "split": "val", "split_description": "the run's fixed validation part", "n_images": 5, "epoch": 3,
        "pixel": {"tp": 80, "fp": 20, "fn": 20, "tn": 880, "precision": 0.8, "recall": 0.8, "f1": f1,
                  "iou": 0.667, "f1_all_positive": 0.18, "f1_negative": 0.98, "prevalence": 0.1},
        "curves": {"roc_auc": 0.95, "average_precision": 0.9, "n_positive": 100, "n_negative": 900},
        "instances": {"components": {"dsb_map": dsb, "paper_map": 0.5, "ap50": 0.7, "tp50": 7, "fp50": 1,
                                     "fn50": 2}},
    }


def test_grid_summary_gives_mean_sd_and_counts_per_cell():
    grid = tables.grid_summary(grid_table(), "F1")
    assert list(grid.mean.index) == ["none", "light"]  # level order; the unevaluated heavy run is left out
    assert list(grid.mean.columns) == [0.1, 0.5]
    assert grid.mean.loc["light", 0.1] == pytest.approx(0.6)
    assert grid.sd.loc["light", 0.1] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert grid.mean.loc["none", 0.5] == pytest.approx(0.8)
    assert grid.sd.loc["none", 0.5] == pytest.approx(0.2)
    assert np.isnan(grid.sd.loc["none", 0.1])  # one run: no spread
    assert np.isnan(grid.mean.loc["light", 0.5])
    assert grid.count.to_dict() == {0.1: {"none": 1, "light": 2}, 0.5: {"none": 3, "light": 0}}


def test_grid_summary_refuses_an_unknown_metric():
    with pytest.raises(UNetLabError, match="no column"):
        tables.grid_summary(grid_table(), "nope")


# ---- progress and tables ---------------------------------------------------------------------


def test_progress_view_of_a_running_run():
    progress = {"epoch": 2, "epochs": 4, "step": 5, "steps_per_epoch": 10, "eta_seconds": 75,
                "elapsed_seconds": 30, "train_loss": 0.25, "phase": "training"}
    view = tables.progress_view("running", progress)
    assert view.fraction == pytest.approx(15 / 40)
    assert "epoch 2/4" in view.text and "step 5/10" in view.text and "ETA 1 min 15 s" in view.text
    assert "train loss 0.2500" in view.text


def test_progress_view_of_other_states():
    assert tables.progress_view("queued", {}) == tables.ProgressView(0.0, "queued: waits for a free training slot")
    assert tables.progress_view("finished", {"epochs": 3}).fraction == 1.0
    failed = tables.progress_view("failed", {"epoch": 2, "epochs": 4, "step": 0, "steps_per_epoch": 10},
                                  error="RuntimeError: boom\ntraceback...")
    assert failed.text == "failed during epoch 2/4: RuntimeError: boom" and failed.fraction == 0.25
    assert tables.progress_view("running", {}).text.startswith("running: loading data")


@pytest.mark.parametrize("seconds, text", [(None, "unknown"), (float("nan"), "unknown"), (4.4, "4 s"),
                                           (75, "1 min 15 s"), (3725, "1 h 2 min")])
def test_format_duration(seconds, text):
    assert tables.format_duration(seconds) == text


def test_runs_table_names_metrics_exactly_and_leaves_unevaluated_runs_empty():
    records = [record("a", train_fraction=0.2, augmentation="heavy", seed=1), record("b", status="running")]
    table = tables.runs_table(records, {"a": summary(f1=0.8125, dsb=0.625), "b": None})
    assert list(table["Run"]) == ["a", "b"]
    f1 = METRIC_NAMES["pixel_f1"]
    assert table.loc[0, f1] == 0.8125
    assert table.loc[0, f"{METRIC_NAMES['dsb_map']} [components]"] == 0.625
    assert table.loc[0, METRIC_NAMES["roc_auc"]] == 0.95
    assert table.loc[0, METRIC_NAMES["pixel_tp"]] == 80
    assert table.loc[0, "Validation images"] == 5 and table.loc[0, "Evaluated on"] == "validation part: random images"
    assert table.loc[0, "Train fraction"] == 0.2 and table.loc[0, "Augmentation"] == "heavy"
    assert np.isnan(table.loc[1, f1]) and table.loc[1, "Status"] == "running"
    assert f1 in tables.comparable_metrics(table)
    assert "Seed" not in tables.comparable_metrics(table)


def test_runs_table_pixel_columns_carry_the_threshold():
    table = tables.runs_table([record("a", threshold=0.3)], {"a": summary()})
    assert "Pixel F1 (Dice) at threshold 0.3" in table.columns


def test_status_table_and_evaluation_state():
    running = record("a", status="running")
    running.progress = {"epoch": 1, "epochs": 2, "step": 1, "steps_per_epoch": 2}
    table = tables.status_table([running])
    assert table.loc[0, "Progress"].startswith("running: epoch 1/2")
    finished = record("b")
    assert tables.evaluation_state(finished, True) == "done"
    assert tables.evaluation_state(finished, False) == "not done"
    finished.pid = os.getpid()  # a live pid no longer means anything: the status says it
    assert tables.evaluation_state(finished, False) == "not done"
    assert tables.evaluation_state(record("c", status="evaluating"), False) == "running"


# ---- operating points ------------------------------------------------------------------------


def test_operating_point_matches_direct_counts_at_a_stored_threshold():
    rng = np.random.default_rng(1)
    truth = rng.random((64, 64)) > 0.7
    probabilities = np.clip(truth * 0.3 + rng.random((64, 64)) * 0.7, 0, 1).astype(np.float32)
    curves = curves_of(probabilities, truth)
    stored = float(curves.thresholds[len(curves.thresholds) // 2])
    point = tables.operating_point(curves, stored - 1e-7)  # just below a stored threshold: that point
    assert point["threshold"] == stored
    predicted = probabilities >= stored
    assert point["tpr"] == pytest.approx((predicted & truth).sum() / truth.sum())
    assert point["fpr"] == pytest.approx((predicted & ~truth).sum() / (~truth).sum())
    assert point["precision"] == pytest.approx((predicted & truth).sum() / predicted.sum())
    assert tables.operating_point(curves, 2.0)["tpr"] == 0.0  # above every probability: nothing positive
    assert tables.operating_point(curves, 0.0)["tpr"] == 1.0


def test_operating_points_table_has_one_row_per_run_with_its_pixel_counts():
    rng = np.random.default_rng(2)
    truth = rng.random((32, 32)) > 0.5
    curves = {"run A": curves_of(np.where(truth, 0.8, 0.3).astype(np.float32), truth),
              "run B": curves_of(rng.random((32, 32)).astype(np.float32), truth)}
    table = tables.operating_points_table(curves, 0.5)
    assert list(table["Run"]) == ["run A", "run B"] and table.loc[0, "Positive pixels"] == truth.sum()


# ---- saved study tables ----------------------------------------------------------------------


def test_read_results_table_accepts_a_study_table_and_names_what_is_wrong():
    from core.tables import read_results_table

    good = b"Run,Dataset,Train fraction,Augmentation,Seed,Pixel F1 (Dice) at threshold 0.5,Batch size\n" \
           b"r1,isbi2012,0.1,none,0,0.93,8\n"
    table = read_results_table(good, "good.csv")
    assert tables.comparable_metrics(table) == ["Pixel F1 (Dice) at threshold 0.5"]  # a setting is not a metric
    with pytest.raises(UNetLabError, match="bad.csv: not a study table.*Seed"):
        read_results_table(b"Run,Dataset,Train fraction,Augmentation\nr1,x,0.1,none\n", "bad.csv")
    with pytest.raises(UNetLabError, match="no evaluated run"):
        read_results_table(b"Run,Dataset,Train fraction,Augmentation,Seed,ROC-AUC (pixels),Pixel F1 (Dice) at threshold 0.5\n"
                           b"r1,x,0.1,none,0,,0.9\n", "no-roc.csv")
    blank = read_results_table(good + b"r2,,0.1,none,1,0.5,8\n", "blank-dataset.csv")
    assert list(blank["Run"]) == ["r1"]
    with pytest.raises(UNetLabError, match="no evaluated run"):
        read_results_table(b"Run,Dataset,Train fraction,Augmentation,Seed,Pixel F1 (Dice) at threshold 0.5\n"
                           b"r1,x,0.1,none,0,\n", "empty.csv")
    with pytest.raises(UNetLabError, match="non-numbers"):
        read_results_table(b"Run,Dataset,Train fraction,Augmentation,Seed,F\nr1,x,ten,none,0,1\n", "text.csv")
    with pytest.raises(UNetLabError, match="not a readable CSV"):
        read_results_table(b"", "blank.csv")


@pytest.mark.parametrize("summary, label", [
    ({"split": "test"}, "official test split"),
    ({"split": "val", "split_description": "contiguous block with a gap of 2 slices (seed 0 picks block 1 of 5): "
                                           "slices #0-#5 of 30 validate"},
     "validation part: contiguous block with a gap of 2 slices"),
    ({"split": "val", "split_description": "split by group (pattern 'x', seed 0): 2 of 7 groups validate"},
     "validation part: whole groups"),
    ({"split": "val", "split_description": "the run's fixed validation part of the training images"},
     "validation part: random images"),
    ({"split": "test", "flip_tta": True}, "official test split, predictions averaged over 4 flips"),
    ({"split": "test", "flip_tta": False}, "official test split"),
])
def test_split_label_names_how_the_validation_part_was_cut(summary, label):
    assert tables.split_label(summary) == label


# ---- settings, budgets and early stopping in the runs table ----------------------------------


def test_runs_table_names_each_runs_setting_budget_and_how_it_stopped():
    stopped = record("a", epochs=20, steps_per_epoch=25, early_stopping_patience=5)
    stopped.progress = {"epochs": 20, "stop_reason": "stopped early at epoch 14: no improvement of the validation "
                                                     "pixel F1 for 5 epochs (best epoch 9, patience 5)"}
    plain = record("b", epochs=12, steps_per_epoch=25, learning_rate=3e-3)
    running = record("c", status="running", epochs=12, steps_per_epoch=25, learning_rate=3e-3, seed=1)
    table = tables.runs_table([stopped, plain, running], {"a": summary(), "b": summary(), "c": None})
    assert list(table[tables.SETTING_COLUMN]) == [
        "at most 500 steps (20 epochs x 25), patience 5, learning rate 0.001",
        "300 steps (12 epochs x 25), learning rate 0.003", "300 steps (12 epochs x 25), learning rate 0.003"]
    assert list(table[tables.BUDGET_COLUMN]) == [500, 300, 300]
    assert table.loc[0, tables.STOPPED_COLUMN].startswith("early at epoch 14: no improvement")
    assert list(table[tables.STOPPED_COLUMN])[1:] == ["after all 12 epochs", ""]
    assert table.loc[0, "Early stopping patience (0 = off)"] == 5 and table.loc[1, "Early stopping patience (0 = off)"] == 0
    assert table.loc[1, "Learning rate"] == 3e-3 and table.loc[0, "Split strategy"] == "auto"
    assert tables.BUDGET_COLUMN not in tables.comparable_metrics(table)
    assert "Learning rate" not in tables.comparable_metrics(table)
    view = tables.progress_view("finished", stopped.progress)
    assert view.text == f"finished: {stopped.progress['stop_reason']} (at most 20)"


def test_a_saved_table_keeps_its_settings_apart():
    f1 = METRIC_NAMES["pixel_f1"]
    csv = ("Run,Dataset,Train fraction,Augmentation,Seed,Epochs,Steps per epoch,Device,"
           f"{METRIC_NAMES['roc_auc']},{f1}\n"
           "r1,d,0.5,none,0,3,25,cpu,0.9,0.70\nr2,d,0.5,none,1,3,25,cuda,0.9,0.72\nr3,d,0.5,none,0,6,25,cpu,0.9,0.90\n")
    table = tables.read_results_table(csv.encode(), "t.csv")
    assert list(tables.table_settings(table)) == ["75 steps (3 epochs x 25)"] * 2 + ["150 steps (6 epochs x 25)"]
    assert tables.variation_text(table) == "varies: epochs (3, 6)"  # the device is bookkeeping
    grid = tables.grid_summary(table, f1)
    assert grid.count.iloc[:, 0].tolist() == [2, 1] and grid.mean.iloc[0, 0] == pytest.approx(0.71)


# ---- round two (#16): labels, display rules, operating points, models, the worker ---------------


def test_run_labels_name_what_differs_and_stay_distinct():
    runs = [record("a00001", epochs=1), record("a00002", epochs=2), record("b00003", epochs=2)]
    labels = tables.run_labels(runs)
    assert labels["a00001"] == "synthetic-nuclei 50% light s0, epochs 1"
    assert labels["a00002"] == "synthetic-nuclei 50% light s0, epochs 2 (a00002)"  # a repeat: the id tells
    assert len(set(labels.values())) == 3
    assert tables.run_labels([record("x")]) == {"x": "synthetic-nuclei 50% light s0"}
    settings = tables.run_settings_table(runs)
    assert list(settings["Epochs"]) == [1, 2, 2] and list(settings["Label"]) == list(labels.values())


def test_display_table_says_not_evaluated_and_uses_one_rule_for_numbers():
    table = tables.runs_table([record("r1"), record("r2")], {"r1": summary(f1=0.81234), "r2": None})
    table.loc[0, tables.metric_name("pixel_tp", 0.5)] = 1234567
    html = tables.display_table(table).to_html()
    assert "not evaluated" in html and "None" not in html and "nan" not in html
    assert "0.812" in html and "0.8123" not in html  # scores: 3 decimals
    assert "1,234,567" in html  # counts: thousands separators
    kinds = tables.column_kinds(table)
    assert kinds[METRIC_NAMES["roc_auc"]] == "score" and kinds["Validation images"] == "count"
    assert "Train fraction" not in kinds and "Seed" not in kinds


def test_operating_points_say_no_positive_prediction_instead_of_infinity():
    rng = np.random.default_rng(0)
    curves = curves_of(rng.random((32, 32)) * 0.4, rng.random((32, 32)) > 0.5)  # no probability >= 0.5
    table = tables.operating_points_table({"low": curves}, 0.9)
    assert table.loc[0, "Curve point threshold"] == tables.NO_POSITIVE
    assert tables.threshold_text(0.49812) == "0.498"


def test_model_facts_and_the_default_model():
    from core.starter import ModelChoice

    runs = {"r1": record("r1", epochs=1), "r2": record("r2", epochs=2)}
    choices = [ModelChoice(key, key, Path("/nonexistent"), runs[key].config, "") for key in runs]
    kinds = tables.model_kinds(choices, lambda dataset: "nucleus")
    facts = tables.model_facts(choices, runs, {"r1": summary(f1=0.9), "r2": None}, kinds)
    assert "pixel F1 0.900 on 5 validation images of synthetic-nuclei" in facts[0].picker_label()
    assert "not evaluated" in facts[1].picker_label()
    assert tables.default_model(facts, "nucleus") == "r1"
    assert tables.default_model(facts, "mitochondrion") == "r1"  # no model of that kind: the best of all


def test_worker_state_gives_a_starting_worker_time():
    assert tables.worker_state(0, False, None, 100.0) == "idle"
    assert tables.worker_state(2, True, None, 100.0) == "running"
    assert tables.worker_state(2, False, 95.0, 100.0) == "starting"
    assert tables.worker_state(2, False, 50.0, 100.0) == "missing"
