"""Tests of core.app_support: the tables, figures, overlays and files the app pages show."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from sklearn.metrics import confusion_matrix

from core import app_support as support
from core.config import ConfigError, RunConfig
from core.errors import DatasetError, UNetLabError
from core.metrics import METRIC_NAMES, PixelCurveAccumulator
from core.runs import RunRecord


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


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


# ---- overlays --------------------------------------------------------------------------------


def test_error_overlay_colours_each_error_class():
    image = np.full((2, 2, 1), 0.5, np.float32)
    truth = np.array([[True, True], [False, False]])
    prediction = np.array([[True, False], [True, False]])
    full = support.error_overlay(image, truth, prediction, opacity=1.0)
    assert full.dtype == np.uint8 and full.shape == (2, 2, 3)
    assert tuple(full[0, 0]) == support.ERROR_COLOURS["true positive"]
    assert tuple(full[0, 1]) == support.ERROR_COLOURS["false negative"]
    assert tuple(full[1, 0]) == support.ERROR_COLOURS["false positive"]
    grey = support.display_rgb(image, stretch=False)[1, 1]
    assert tuple(full[1, 1]) == tuple(grey) == (128, 128, 128)  # true negative keeps the image
    half = support.error_overlay(image, truth, prediction, opacity=0.5)
    expected = np.rint(0.5 * 128 + 0.5 * np.array(support.ERROR_COLOURS["false positive"])).astype(np.uint8)
    assert tuple(half[1, 0]) == tuple(expected)


def test_error_counts_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    truth, prediction = rng.random((40, 30)) > 0.6, rng.random((40, 30)) > 0.5
    counts = support.error_counts(truth, prediction)
    tn, fp, fn, tp = confusion_matrix(truth.ravel(), prediction.ravel()).ravel()
    assert counts == {"true positive": tp, "false positive": fp, "false negative": fn, "true negative": tn}


def test_error_overlay_refuses_mismatched_shapes_and_bad_opacity():
    with pytest.raises(UNetLabError, match="same height and width"):
        support.error_overlay(np.zeros((4, 4)), np.zeros((4, 5), bool), np.zeros((4, 4), bool))
    with pytest.raises(UNetLabError, match="opacity"):
        support.error_overlay(np.zeros((4, 4)), np.zeros((4, 4), bool), np.zeros((4, 4), bool), opacity=2)


def test_label_overlay_colours_objects_distinctly_and_outlines_them():
    image = np.zeros((12, 12), np.float32)
    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5] = 1
    labels[6:11, 6:11] = 2
    out = support.label_overlay(image, labels, opacity=1.0)
    assert (out[labels == 0] == 0).all()  # background untouched
    assert (out[1, 1] == 255).all()  # outline pixel
    assert tuple(out[3, 3]) != tuple(out[8, 8])  # inner pixels of two objects differ in colour
    assert tuple(out[3, 3]) == tuple(support.label_colours(2)[1])


def test_display_rgb_stretches_dim_16_bit_images():
    image = (np.arange(100, dtype=np.float32).reshape(10, 10) * 40) / 65535  # a 12-bit range in 16 bits
    shown = support.display_rgb(image)
    assert shown.shape == (10, 10, 3) and shown.max() == 255 and shown.min() == 0
    assert support.display_rgb(image, stretch=False).max() < 20


def test_probability_image_is_viridis():
    out = support.probability_image(np.array([[0.0, 1.0]], np.float32))
    assert tuple(out[0, 0]) == (68, 1, 84) and tuple(out[0, 1]) == (253, 231, 37)


# ---- the grid --------------------------------------------------------------------------------


def grid_table() -> pd.DataFrame:
    rows = [("light", 0.1, 0.5), ("light", 0.1, 0.7), ("none", 0.1, 0.4), ("none", 0.5, 0.8),
            ("none", 0.5, 0.6), ("none", 0.5, 1.0), ("heavy", 0.5, np.nan)]
    return pd.DataFrame(rows, columns=["Augmentation", "Train fraction", "F1"])


def test_grid_summary_gives_mean_sd_and_counts_per_cell():
    grid = support.grid_summary(grid_table(), "F1")
    assert list(grid.mean.index) == ["none", "light"]  # level order; the unevaluated heavy run is left out
    assert list(grid.mean.columns) == [0.1, 0.5]
    assert grid.mean.loc["light", 0.1] == pytest.approx(0.6)
    assert grid.sd.loc["light", 0.1] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert grid.mean.loc["none", 0.5] == pytest.approx(0.8)
    assert grid.sd.loc["none", 0.5] == pytest.approx(0.2)
    assert np.isnan(grid.sd.loc["none", 0.1])  # one run: no spread
    assert np.isnan(grid.mean.loc["light", 0.5])
    assert grid.count.to_dict() == {0.1: {"none": 1, "light": 2}, 0.5: {"none": 3, "light": 0}}


def test_grid_heatmap_writes_mean_sd_and_n_in_each_cell():
    figure = support.grid_heatmap(support.grid_summary(grid_table(), "F1"))
    text = figure.data[0].text
    assert text[1][0] == "0.600 ± 0.141<br>n = 2"
    assert text[0][0] == "0.400<br>n = 1"
    assert text[1][1] == "no runs"
    assert list(figure.data[0].x) == ["10%", "50%"]


def test_grid_summary_refuses_an_unknown_metric():
    with pytest.raises(UNetLabError, match="no column"):
        support.grid_summary(grid_table(), "nope")


# ---- launching -------------------------------------------------------------------------------


def test_grid_configs_cover_every_combination_in_order():
    base = RunConfig(epochs=3, base_width=8)
    configs = support.grid_configs(base, [0.1, 0.5], ["none", "heavy"], [0, 1, 2], study="s")
    assert len(configs) == 12
    assert [(c.train_fraction, c.augmentation, c.seed) for c in configs[:4]] == [
        (0.1, "none", 0), (0.1, "none", 1), (0.1, "none", 2), (0.1, "heavy", 0)]
    assert all(c.epochs == 3 and c.base_width == 8 and c.study == "s" for c in configs)
    assert base.seed == 0 and base.study is None  # the base config is not changed


def test_grid_configs_refuse_empty_lists_and_bad_values():
    with pytest.raises(UNetLabError, match="at least one augmentation level"):
        support.grid_configs(RunConfig(), [0.5], [], [0])
    with pytest.raises(ConfigError, match="train_fraction"):
        support.grid_configs(RunConfig(), [0.9], ["none"], [0])


@pytest.mark.parametrize("text, seeds", [("0", [0]), ("0, 1,2", [0, 1, 2]), ("0-3", [0, 1, 2, 3]),
                                         ("2, 0-2", [2, 0, 1]), ("1;3", [1, 3])])
def test_parse_seeds(text, seeds):
    assert support.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1.5", "-1", "3-1"])
def test_parse_seeds_refuses_bad_text(text):
    with pytest.raises(UNetLabError, match="seed"):
        support.parse_seeds(text)


# ---- progress and tables ---------------------------------------------------------------------


def test_progress_view_of_a_running_run():
    progress = {"epoch": 2, "epochs": 4, "step": 5, "steps_per_epoch": 10, "eta_seconds": 75,
                "elapsed_seconds": 30, "train_loss": 0.25, "phase": "training"}
    view = support.progress_view("running", progress)
    assert view.fraction == pytest.approx(15 / 40)
    assert "epoch 2/4" in view.text and "step 5/10" in view.text and "ETA 1 min 15 s" in view.text
    assert "train loss 0.2500" in view.text


def test_progress_view_of_other_states():
    assert support.progress_view("queued", {}) == support.ProgressView(0.0, "queued: waits for a free training slot")
    assert support.progress_view("finished", {"epochs": 3}).fraction == 1.0
    failed = support.progress_view("failed", {"epoch": 2, "epochs": 4, "step": 0, "steps_per_epoch": 10},
                                   error="RuntimeError: boom\ntraceback...")
    assert failed.text == "failed during epoch 2/4: RuntimeError: boom" and failed.fraction == 0.25
    assert support.progress_view("running", {}).text.startswith("running: loading data")


@pytest.mark.parametrize("seconds, text", [(None, "unknown"), (float("nan"), "unknown"), (4.4, "4 s"),
                                           (75, "1 min 15 s"), (3725, "1 h 2 min")])
def test_format_duration(seconds, text):
    assert support.format_duration(seconds) == text


def test_runs_table_names_metrics_exactly_and_leaves_unevaluated_runs_empty():
    records = [record("a", train_fraction=0.2, augmentation="heavy", seed=1), record("b", status="running")]
    table = support.runs_table(records, {"a": summary(f1=0.8125, dsb=0.625), "b": None})
    assert list(table["Run"]) == ["a", "b"]
    f1 = METRIC_NAMES["pixel_f1"]
    assert table.loc[0, f1] == 0.8125
    assert table.loc[0, f"{METRIC_NAMES['dsb_map']} [components]"] == 0.625
    assert table.loc[0, METRIC_NAMES["roc_auc"]] == 0.95
    assert table.loc[0, METRIC_NAMES["pixel_tp"]] == 80
    assert table.loc[0, "Validation images"] == 5 and table.loc[0, "Evaluated on"] == "validation part"
    assert table.loc[0, "Train fraction"] == 0.2 and table.loc[0, "Augmentation"] == "heavy"
    assert np.isnan(table.loc[1, f1]) and table.loc[1, "Status"] == "running"
    assert f1 in support.comparable_metrics(table)
    assert "Seed" not in support.comparable_metrics(table)


def test_runs_table_pixel_columns_carry_the_threshold():
    table = support.runs_table([record("a", threshold=0.3)], {"a": summary()})
    assert "Pixel F1 (Dice) at threshold 0.3" in table.columns


def test_status_table_and_evaluation_state():
    running = record("a", status="running")
    running.progress = {"epoch": 1, "epochs": 2, "step": 1, "steps_per_epoch": 2}
    table = support.status_table([running])
    assert table.loc[0, "Progress"].startswith("running: epoch 1/2")
    finished = record("b")
    assert support.evaluation_state(finished, True) == "done"
    assert support.evaluation_state(finished, False) == "not done"
    finished.pid = os.getpid()  # its process is alive: it is evaluating
    assert support.evaluation_state(finished, False) == "running"


# ---- curves ----------------------------------------------------------------------------------


def curves_of(probabilities: np.ndarray, truth: np.ndarray):
    accumulator = PixelCurveAccumulator()
    accumulator.update(probabilities, truth)
    return accumulator.result()


def test_operating_point_matches_direct_counts_at_a_stored_threshold():
    rng = np.random.default_rng(1)
    truth = rng.random((64, 64)) > 0.7
    probabilities = np.clip(truth * 0.3 + rng.random((64, 64)) * 0.7, 0, 1).astype(np.float32)
    curves = curves_of(probabilities, truth)
    stored = float(curves.thresholds[len(curves.thresholds) // 2])
    point = support.operating_point(curves, stored - 1e-7)  # just below a stored threshold: that point
    assert point["threshold"] == stored
    predicted = probabilities >= stored
    assert point["tpr"] == pytest.approx((predicted & truth).sum() / truth.sum())
    assert point["fpr"] == pytest.approx((predicted & ~truth).sum() / (~truth).sum())
    assert point["precision"] == pytest.approx((predicted & truth).sum() / predicted.sum())
    assert support.operating_point(curves, 2.0)["tpr"] == 0.0  # above every probability: nothing positive
    assert support.operating_point(curves, 0.0)["tpr"] == 1.0


def test_roc_pr_figures_show_areas_in_the_legend_and_mark_the_operating_point():
    rng = np.random.default_rng(2)
    truth = rng.random((32, 32)) > 0.5
    curves = {"run A": curves_of(np.where(truth, 0.8, 0.3).astype(np.float32), truth),
              "run B": curves_of(rng.random((32, 32)).astype(np.float32), truth)}
    roc, pr = support.roc_pr_figures(curves, 0.5)
    names = [trace.name for trace in roc.data if trace.showlegend is not False]
    assert f"run A ({METRIC_NAMES['roc_auc']} = 1.0000)" in names
    assert any(name.startswith("run B (ROC-AUC (pixels) = 0.") for name in names)
    assert any(f"{METRIC_NAMES['average_precision']} = 1.0000" in trace.name for trace in pr.data if trace.name)
    markers = [trace for trace in roc.data if trace.mode == "markers"]
    assert len(markers) == 2
    point = support.operating_point(curves["run A"], 0.5)
    assert (markers[0].x[0], markers[0].y[0]) == (point["fpr"], point["tpr"]) == (0.0, 1.0)
    table = support.operating_points_table(curves, 0.5)
    assert list(table["Run"]) == ["run A", "run B"] and table.loc[0, "Positive pixels"] == truth.sum()


def test_curves_from_arrays_round_trip():
    truth = np.eye(8, dtype=bool)
    curves = curves_of(np.where(truth, 0.9, 0.2).astype(np.float32), truth)
    arrays = {f"curve_{key}": value for key, value in curves.to_dict().items()}
    arrays["probability_0"] = np.zeros((2, 2), np.float16)
    rebuilt = support.curves_from_arrays(arrays)
    assert rebuilt.roc_auc == curves.roc_auc and np.array_equal(rebuilt.tpr, curves.tpr)
    assert support.curves_from_arrays({}) is None


def test_training_curves_figure_has_one_trace_per_run_and_panel():
    history = [{"epoch": 0, "val_loss": 0.7, "val_f1": 0.2},
               {"epoch": 1, "train_loss": 0.6, "val_loss": 0.5, "val_f1": 0.5},
               {"epoch": 2, "train_loss": 0.4, "val_loss": 0.4, "val_f1": 0.7}]
    figure = support.training_curves_figure({"a": history, "b": history[:2]})
    assert len(figure.data) == 6
    train_loss_a = figure.data[0]
    assert list(train_loss_a.x) == [1, 2] and list(train_loss_a.y) == [0.6, 0.4]  # epoch 0 has no training loss
    assert list(figure.data[2].y) == [0.2, 0.5, 0.7]


# ---- datasets --------------------------------------------------------------------------------


def write_folder(root: Path, n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i:12 + i, 5:15] = 255
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


def test_register_user_dataset_checks_the_folder_and_lists_it(tmp_path):
    root = write_folder(tmp_path / "mine")
    entry = support.register_user_dataset("folder", root)
    assert entry.root == str(root.resolve()) and entry.dataset == "folder"
    again = support.register_user_dataset("folder", str(root))  # registering twice keeps one entry
    listed = support.load_user_datasets()
    assert [e.root for e in listed] == [str(root.resolve())] and listed[0].label == again.label
    from core.datasets import list_datasets

    choices = support.dataset_choices(list_datasets(), listed)
    assert choices[0].dataset == "synthetic-nuclei" and choices[0].root is None
    assert choices[-1] == support.DatasetChoice(entry.label, "folder", str(root.resolve()))
    assert all(c.dataset not in ("isbi2012", "folder") for c in choices[:-1])  # they need a folder
    table = support.datasets_table(list_datasets(), listed)
    assert table.iloc[-1]["Folder"] == str(root.resolve())


def test_register_user_dataset_reports_the_loaders_error(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        support.register_user_dataset("folder", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        support.register_user_dataset("folder", tmp_path / "empty")
    assert support.load_user_datasets() == []


# ---- uploads and downloads -------------------------------------------------------------------


def test_read_upload_accepts_8_and_16_bit_grey_rgb_and_rgba():
    grey16 = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000)
    image = support.read_upload("a.png", png(grey16))
    assert image.shape == (6, 10, 1) and image.dtype == np.float32
    assert image[0, 1, 0] == pytest.approx(1000 / 65535)
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = 255
    assert support.read_upload("b.PNG", png(rgba)).shape == (5, 7, 3)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, grey16)
    assert support.read_upload("c.tif", buffer.getvalue()).shape == (6, 10, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(buffer, format="JPEG")
    assert support.read_upload("d.jpeg", buffer.getvalue()).shape == (8, 8, 3)


def test_read_upload_gives_clear_errors():
    with pytest.raises(DatasetError, match="file type .gif is not supported"):
        support.read_upload("a.gif", b"GIF89a")
    with pytest.raises(DatasetError, match="empty"):
        support.read_upload("a.png", b"")
    with pytest.raises(DatasetError, match="not a readable PNG, JPEG or TIFF"):
        support.read_upload("a.png", b"this is not an image")
    with pytest.raises(DatasetError, match="over the limit of 100 pixels"):
        support.read_upload("a.png", png(np.zeros((20, 20), np.uint8)), max_pixels=100)


def test_image_dimensions_reads_headers():
    assert support.image_dimensions("a.png", png(np.zeros((7, 9), np.uint8))) == (7, 9)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((3, 5), np.uint16))
    assert support.image_dimensions("a.tif", buffer.getvalue()) == (3, 5)


def test_mask_and_label_downloads_round_trip():
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    decoded = np.asarray(Image.open(io.BytesIO(support.mask_download(mask))))
    assert decoded.dtype == np.uint8 and set(np.unique(decoded)) == {0, 255} and np.array_equal(decoded > 0, mask)
    labels = np.arange(24, dtype=np.int32).reshape(4, 6) * 2000
    data, suffix, mime = support.labels_download(labels)
    assert (suffix, mime) == (".png", "image/png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))).astype(np.int64), labels)
    labels[0, 0] = 70000
    data, suffix, _ = support.labels_download(labels)
    assert suffix == ".tif" and np.array_equal(tifffile.imread(io.BytesIO(data)), labels)


# ---- segmenting ------------------------------------------------------------------------------


def test_predict_image_with_a_saved_checkpoint(tmp_path):
    import torch

    from core.checkpoints import save_checkpoint
    from core.model import UNet

    torch.manual_seed(0)
    config = RunConfig(base_width=4, depth=2, tile_size=64, device="cpu", precision="fp32")
    model = UNet(in_channels=1, base_width=4, depth=2)
    path = save_checkpoint(tmp_path / "best.pt", {"state_dict": model.state_dict(), "config": config.to_dict(),
                                                  "epoch": 3, "in_channels": 1})
    loaded = support.load_run_model(path, device="cpu")
    assert loaded.channels == 1 and loaded.epoch == 3 and loaded.precision == "fp32"
    rgb = np.random.default_rng(0).random((100, 70, 3)).astype(np.float32)  # RGB into a grey model
    result = support.predict_image(loaded, rgb)
    assert result.probability.shape == (100, 70) and result.probability.dtype == np.float32
    assert 0 <= result.probability.min() and result.probability.max() <= 1
    assert result.tiles == 4 and result.seconds > 0  # 2 x 2 tiles of 64 px cover 100 x 70
    with torch.no_grad():
        whole = torch.sigmoid(loaded.model(torch.from_numpy(rgb.mean(axis=2)[None, None, :64, :64].copy())))
    assert np.abs(support.predict_image(loaded, rgb[:64, :64]).probability - whole[0, 0].numpy()).max() < 1e-5


def test_postprocess_parameters_list_the_tunable_ones():
    names = [p["name"] for p in support.postprocess_parameters("watershed")]
    assert "min_distance" in names and "threshold" not in names
    with pytest.raises(UNetLabError, match="unknown post-processing method"):
        support.postprocess_parameters("magic")


def test_read_results_table_accepts_a_study_table_and_names_what_is_wrong():
    from core.app_support import read_results_table

    good = b"Run,Dataset,Train fraction,Augmentation,Seed,Pixel F1 (Dice) at threshold 0.5,Batch size\n" \
           b"r1,isbi2012,0.1,none,0,0.93,8\n"
    table = read_results_table(good, "good.csv")
    assert support.comparable_metrics(table) == ["Pixel F1 (Dice) at threshold 0.5"]  # a setting is not a metric
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
