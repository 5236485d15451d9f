"""Streamlit AppTest tests of every page: empty registry, a run launched from the Train page,
and the other pages showing that run once it has finished and been evaluated."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.paths import PROJECT_ROOT
from helpers import tiny_cli_run
from core.runs import Registry, process_alive

PAGE_FILES = ["app.py", *sorted(str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "pages").glob("*.py"))]
TIMEOUT = 120
# A run that trains in a few seconds on two CPU cores.
TINY = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch_size": 64, "depth": 3}


def app(page: str) -> AppTest:
    return AppTest.from_file(str(PROJECT_ROOT / page), default_timeout=TIMEOUT)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def stop_worker(cache: Path) -> None:
    """End the queue worker this test's registry started (read from its lock file), if alive."""
    lock = cache / "worker.lock"
    try:
        pid = json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    if process_alive(pid):
        os.kill(pid, signal.SIGTERM)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def plotly_values(values) -> list:
    """A plotly JSON array: a list, or plotly 6's ``{"dtype", "bdata"}`` binary form."""
    if isinstance(values, dict) and "bdata" in values:
        import base64

        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"])).tolist()
    return list(values or [])


def marker_points(spec: dict) -> int:
    """The points drawn as markers in a plotly figure's JSON (the learning curve's runs)."""
    return sum(len(plotly_values(trace.get("x"))) for trace in spec["data"] if trace.get("mode") == "markers")


def test_there_are_at_least_five_pages():
    assert len(PAGE_FILES) >= 6 and PAGE_FILES[0] == "app.py"


@pytest.mark.parametrize("page", PAGE_FILES)
def test_page_renders_with_an_empty_registry(page):
    at = app(page).run()
    assert_clean(at)
    assert at.title, "every page has a title"


def test_navigation_reaches_every_page():
    at = app("app.py").run()
    assert_clean(at)
    assert at.title[0].value == "U-Net Lab"
    for page in PAGE_FILES[1:]:
        at.switch_page(page).run()
        assert_clean(at)
        expected = Path(page).stem.split("_", 1)[1]
        assert at.title[0].value == ("U-Net Lab" if expected == "Home" else expected)


def test_empty_pages_say_what_to_do():
    assert any("No runs yet" in info.value for info in app("pages/0_Home.py").run().info)
    assert any("No runs yet" in info.value for info in app("pages/2_Compare.py").run().info)
    assert any("No evaluated runs" in info.value for info in app("pages/3_Curves.py").run().info)
    from core.starter import starter_models

    segment = app("pages/5_Segment.py").run()
    if starter_models():  # a fresh install segments with the shipped model before any training
        assert any("(shipped)" in option for option in segment.selectbox(key="segment_run").options)
        assert any("Upload an image" in info.value for info in segment.info)
    else:
        assert any("No trained model" in info.value for info in segment.info)


def test_train_page_reports_bad_settings_and_folders(tmp_path):
    at = app("pages/1_Train.py").run()
    at.text_input(key="seeds").set_value("zero").run()
    assert any("seeds" in error.value for error in at.error)
    assert at.button(key="launch").disabled
    at.text_input(key="folder_path").set_value(str(tmp_path / "absent"))
    at.button(key="register_folder").click().run()
    assert_clean(at)
    assert any("no such folder" in error.value for error in at.error)


def test_train_page_registers_a_folder_and_selects_it(tmp_path):
    from test_user_datasets import write_folder

    root = write_folder(tmp_path / "my-cells", n=4)
    at = app("pages/1_Train.py").run()
    at.text_input(key="folder_path").set_value(str(root))
    at.button(key="register_folder").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="dataset_choice").value == "folder: my-cells"
    assert any("4 labelled images" in markdown.value for markdown in at.markdown)
    assert "folder: my-cells" in at.selectbox(key="dataset_choice").options
    home = app("pages/0_Home.py").run()
    assert str(root.resolve()) in list(home.dataframe[0].value["Folder"])


def test_train_page_cancels_and_resumes_a_queued_run(monkeypatch):
    from core import queue
    from core.config import RunConfig

    monkeypatch.setattr(queue, "ensure_worker", lambda *args, **kwargs: False)  # keep the run queued
    (run_id,) = queue.enqueue([RunConfig(**TINY)], start_worker=False)
    at = app("pages/1_Train.py").run()
    at.button(key=f"cancel-{run_id}").click().run()
    assert_clean(at)
    assert Registry().get_run(run_id).status == "cancelled"
    at.button(key=f"resume-{run_id}").click().run()
    assert_clean(at)
    assert Registry().get_run(run_id).status == "queued"


def test_train_page_passes_the_best_epoch_score_and_weight_averaging(monkeypatch):
    from core import queue

    monkeypatch.setattr(queue, "ensure_worker", lambda *args, **kwargs: False)  # queue only, train nothing
    at = app("pages/1_Train.py").run()
    assert at.selectbox(key="best_by").value == "val_f1" and at.number_input(key="ema_decay").value == 0.0
    at.selectbox(key="best_by").set_value("val_f1_negative")
    at.number_input(key="ema_decay").set_value(0.99).run()
    at.button(key="launch").click().run()
    assert_clean(at)
    (run,) = Registry().list_runs()
    assert (run.config.best_by, run.config.ema_decay) == ("val_f1_negative", 0.99)


def test_train_page_queues_a_grid(monkeypatch):
    from core import queue

    monkeypatch.setattr(queue, "ensure_worker", lambda *args, **kwargs: False)  # queue only, train nothing
    at = app("pages/1_Train.py").run()
    at.radio(key="mode").set_value("A grid: training fractions x augmentation levels x seeds").run()
    at.multiselect(key="grid_fractions").set_value([0.1, 0.5])
    at.multiselect(key="grid_levels").set_value(["none", "heavy"])
    at.text_input(key="seeds").set_value("0-2")
    at.text_input(key="study").set_value("ablation").run()
    assert at.button(key="launch").label == "Launch 12 run(s)"
    at.button(key="launch").click().run()
    assert_clean(at)
    runs = Registry().list_runs(study="ablation")
    assert len(runs) == 12 and {run.status for run in runs} == {"queued"}
    assert {(r.config.train_fraction, r.config.augmentation, r.config.seed) for r in runs} == {
        (f, a, s) for f in (0.1, 0.5) for a in ("none", "heavy") for s in (0, 1, 2)}
    assert sum("queued: waits" in bar.proto.text for bar in at.get("progress")) == 12

    # A study like one defined on the command line: its stored grid gives back exactly these runs,
    # so `python -m core study run --name ablation` would queue nothing new.
    from core.study import load_study, plan_study, run_identity

    definition = load_study("ablation", Registry())
    assert definition is not None and len(definition.grids) == 1
    assert definition.grids[0].command.startswith("# launched from the app's Train page: synthetic-nuclei")
    assert sorted(map(run_identity, definition.configs())) == sorted(run_identity(r.config) for r in runs)
    assert {item.action for item in plan_study(definition, Registry())} == {"wait"}

    at.text_input(key="study").set_value("bad name!").run()
    assert "study name 'bad name!'" in at.error[0].value and at.button(key="launch").disabled


# ---- a run launched from the Train page --------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Launch a tiny run from the Train page and wait until it is finished and evaluated.

    The module's tests share it, so they point the registry at its folders again (the
    autouse fixture gives every test fresh, empty ones).
    """
    base = tmp_path_factory.mktemp("app-study")
    env = {"UNETLAB_CACHE": str(base / "cache"), "UNETLAB_CHECKPOINTS": str(base / "checkpoints")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        at = app("pages/1_Train.py").run()
        at.number_input(key="epochs").set_value(TINY["epochs"])
        at.selectbox(key="base_width").set_value(8)
        for key in ("steps_per_epoch", "batch_size", "patch_size", "depth"):
            at.number_input(key=key).set_value(TINY[key])
        at.run()
        at.button(key="launch").click().run()
        assert_clean(at)
        assert any("Queued 1 run" in message.value for message in at.success)
        registry = Registry()
        (run,) = registry.list_runs()
        try:
            wait_until(lambda: registry.get_run(run.id).status in ("finished", "failed", "cancelled"), 240,
                       "the run to end")
            assert registry.get_run(run.id).status == "finished", registry.get_run(run.id).error
            wait_until(lambda: registry.get_evaluation(run.id) is not None, 240, "the run's evaluation")
        finally:
            stop_worker(base / "cache")
        yield {"run_id": run.id, "env": env, "after_launch": at}


@pytest.fixture
def with_run(trained, monkeypatch):
    for key, value in trained["env"].items():
        monkeypatch.setenv(key, value)
    return trained


def test_train_page_launch_reaches_finished(with_run):
    registry = Registry()
    run = registry.get_run(with_run["run_id"])
    assert run.status == "finished" and run.best_checkpoint.is_file()
    assert [epoch["epoch"] for epoch in registry.epochs(run.id)] == [0, 1]
    assert run.config.epochs == 1 and run.config.base_width == 8 and run.config.patch_size == 64
    at = app("pages/1_Train.py").run()  # a reload shows the run as it is in the registry
    assert_clean(at)
    bars = [bar for bar in at.get("progress")]
    assert bars and bars[0].proto.value == 100 and "finished" in bars[0].proto.text
    assert any("Full evaluation: done" in caption.value for caption in at.caption)


@pytest.mark.parametrize("page", PAGE_FILES)
def test_page_renders_with_a_finished_run(with_run, page):
    at = app(page).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]


def test_home_lists_the_run(with_run):
    at = app("pages/0_Home.py").run()
    table = at.dataframe[1].value
    assert list(table["Run"]) == [with_run["run_id"]] and list(table["Status"]) == ["finished"]


def test_compare_shows_the_run_with_named_metrics(with_run):
    from core.metrics import METRIC_NAMES

    at = app("pages/2_Compare.py").run()
    table = at.dataframe[0].value
    assert list(table["Run"]) == [with_run["run_id"]]
    f1 = table.loc[0, METRIC_NAMES["pixel_f1"]]
    evaluation = Registry().get_evaluation(with_run["run_id"])
    assert f1 == evaluation["pixel"]["f1"] and 0 <= f1 <= 1
    assert table.loc[0, METRIC_NAMES["roc_auc"]] == evaluation["curves"]["roc_auc"]
    assert at.get("download_button"), "CSV download offered"
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # the grid heatmap, the training curves and the learning curve
    heatmap = json.loads(charts[0].proto.spec)["data"][0]
    assert heatmap["type"] == "heatmap" and "n = 1" in heatmap["text"][0][0]
    assert "best" in heatmap["text"][0][0] and "zmin" not in heatmap  # the only cell is the best one
    at.checkbox(key="grid_zero_to_one").check().run()
    assert_clean(at)
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert (heatmap["zmin"], heatmap["zmax"]) == (0, 1)
    learning = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert marker_points(learning) == 1


def test_curves_shows_the_run_with_auc_and_ap(with_run):
    at = app("pages/3_Curves.py").run()
    assert at.multiselect(key="curve_runs").value == [with_run["run_id"]]
    roc, pr = (json.loads(chart.proto.spec) for chart in at.get("plotly_chart"))
    assert any("ROC-AUC (pixels) = " in (trace.get("name") or "") for trace in roc["data"])
    assert any("Average precision (pixels) = " in (trace.get("name") or "") for trace in pr["data"])
    at.slider(key="threshold").set_value(0.3).run()
    assert_clean(at)
    assert any("threshold 0.3" in subheader.value for subheader in at.subheader)


def test_masks_shows_the_run(with_run):
    at = app("pages/4_Masks.py").run()
    assert at.selectbox(key="mask_run").value == with_run["run_id"]
    assert len(at.get("image")) >= 8  # image, truth, probability, errors, truth + 3 methods' instances
    assert any("validation part" in caption.value for caption in at.caption)
    at.slider(key="mask_threshold").set_value(0.2)
    at.slider(key="mask_opacity").set_value(0.8).run()
    assert_clean(at)
    assert any("at threshold 0.2" in markdown.value for markdown in at.markdown)


def png_bytes(shape=(96, 80), dtype=np.uint8) -> bytes:
    rng = np.random.default_rng(0)
    image = (rng.random(shape) * np.iinfo(dtype).max).astype(dtype)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_segment_produces_a_mask_for_an_uploaded_image(with_run):
    at = app("pages/5_Segment.py").run()
    at.file_uploader(key="upload").set_value(("cells.png", png_bytes(), "image/png")).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    metrics = {metric.label: metric.value for metric in at.metric}
    assert int(metrics["Objects found"].replace(",", "")) >= 0
    assert metrics["Prediction time"].endswith(" s")
    assert any("80 x 96 pixels" in caption.value for caption in at.caption)
    assert len(at.get("download_button")) == 3  # the zip, the mask and the label image
    at.selectbox(key="segment_method").set_value("watershed").run()
    assert_clean(at)


def test_segment_reports_bad_uploads_clearly(with_run):
    at = app("pages/5_Segment.py").run()
    at.file_uploader(key="upload").set_value(("cells.png", b"not an image at all", "image/png")).run()
    assert_clean(at)
    assert any("not a readable PNG, JPEG or TIFF" in error.value for error in at.error)
    at.file_uploader(key="upload").set_value(("cells.bmp", png_bytes(), "image/bmp")).run()
    assert_clean(at)
    assert any("not supported" in error.value for error in at.error)


def test_compare_shows_a_saved_study_table_without_its_registry(tmp_path, monkeypatch):
    import pandas as pd

    from core.metrics import METRIC_NAMES

    f1, roc = METRIC_NAMES["pixel_f1"], METRIC_NAMES["roc_auc"]
    rows = [{"Run": f"r{i}", "Dataset": "isbi2012", "Train fraction": fraction, "Augmentation": level, "Seed": seed,
             f1: 0.90 + 0.01 * i, roc: 0.95}
            for i, (fraction, level, seed) in enumerate((f, a, s) for f in (0.1, 0.8) for a in ("none", "heavy")
                                                        for s in (0, 1))]
    (tmp_path / "docs" / "study").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "docs" / "study" / "results.csv", index=False)
    (tmp_path / "docs" / "notes.csv").write_text("a,b\n1,2\n")
    monkeypatch.setattr("core.paths.PROJECT_ROOT", tmp_path)

    at = app("pages/2_Compare.py").run()
    at.radio(key="source").set_value("A saved study table (CSV)").run()
    assert_clean(at)
    assert at.selectbox(key="saved_table").options == ["docs/notes.csv", "docs/study/results.csv"]
    at.selectbox(key="saved_table").set_value("docs/study/results.csv").run()
    assert_clean(at)
    assert len(at.dataframe[0].value) == 8
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    # none at 10%: runs 0 and 1 -> F1 0.900 and 0.910, mean 0.905 over n = 2 seeds
    assert heatmap["text"][0][0].startswith("0.905") and heatmap["text"][0][0].endswith("n = 2")

    at.selectbox(key="saved_table").set_value("docs/notes.csv").run()
    assert "not a study table" in at.error[0].value and "Dataset" in at.error[0].value


# ---- round two (#16): two runs that differ only in epochs -----------------------------------------


def tiff_stack(planes: int = 5, shape=(64, 48)) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    stack = (np.random.default_rng(1).random((planes, *shape)) * 255).astype(np.uint8)
    tifffile.imwrite(buffer, stack)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny runs (CLI) that differ only in epochs (1 and 2), finished and evaluated."""
    base = tmp_path_factory.mktemp("app-two-runs")
    for epochs in (1, 2):
        env = tiny_cli_run(base, "--train-fraction", "0.5", "--augmentation", "none", epochs=epochs)
    return env


@pytest.fixture
def with_two_runs(two_runs, monkeypatch):
    for key, value in two_runs.items():
        monkeypatch.setenv(key, value)
    return two_runs


def run_options(at: AppTest) -> list[list[str]]:
    """The options of every picker that names runs."""
    import re

    named = re.compile(r"synthetic-nuclei \d+%")
    return [[str(o) for o in widget.options or []] for widget in [*at.selectbox, *at.multiselect]
            if any(named.search(str(o)) for o in widget.options or [])]


@pytest.mark.parametrize("page", ["pages/2_Compare.py", "pages/3_Curves.py", "pages/4_Masks.py", "pages/5_Segment.py"])
def test_run_labels_say_what_differs(with_two_runs, page):
    at = app(page).run()
    assert_clean(at)
    pickers = run_options(at)
    assert pickers, "the page has a run picker"
    for options in pickers:
        runs = [option for option in options if "synthetic-nuclei " in option]
        assert len(runs) == len(set(runs)) == 2, runs
        assert any("epochs 1" in option for option in runs) and any("epochs 2" in option for option in runs)
    if page != "pages/5_Segment.py":
        assert any("Every setting" in expander.label for expander in at.expander)


def test_train_page_estimates_the_time_from_measured_runs(with_two_runs):
    at = app("pages/1_Train.py").run()
    at.number_input(key="epochs").set_value(2)
    at.selectbox(key="base_width").set_value(8)
    for key in ("steps_per_epoch", "batch_size", "patch_size", "depth"):
        at.number_input(key=key).set_value(TINY[key])
    at.run()
    assert_clean(at)
    (estimate,) = [info.value for info in at.info if "Estimated time" in info.value]
    assert "for 1 run(s)" in estimate
    assert any("measured by 2 run(s) at width 8, depth 3, patch 64, batch 2" in c.value for c in at.caption)
    # The estimate against the measured 2-epoch run (same settings): within a factor of 2.
    from core.estimate import estimate_run, samples_from_registry
    from core.config import RunConfig

    registry = Registry()
    runs = registry.list_runs(status="finished")
    samples = samples_from_registry(runs, {run.id: registry.epochs(run.id) for run in runs})
    config = RunConfig(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="none", epochs=2, base_width=8,
                       **{k: v for k, v in TINY.items() if k != "epochs"})
    (actual,) = [run.finished - run.started for run in runs if run.config.epochs == 2]
    assert 0.5 < estimate_run(config, samples).seconds / actual < 2.0
    at.radio(key="mode").set_value("A grid: training fractions x augmentation levels x seeds").run()
    assert any("for 16 run(s)" in info.value for info in at.info)  # 4 fractions x 4 levels, one seed


def test_train_page_waits_for_a_starting_worker_before_warning(monkeypatch):
    from core import queue, tables

    monkeypatch.setattr(queue, "ensure_worker", lambda *args, **kwargs: False)  # a worker that never comes
    at = app("pages/1_Train.py").run()
    for key, value in TINY.items():
        at.number_input(key=key).set_value(value)
    at.button(key="launch").click().run()
    assert_clean(at)
    assert not any("no worker serves" in warning.value for warning in at.warning)
    assert any("Training worker: starting" in caption.value for caption in at.caption)
    monkeypatch.setattr(tables, "WORKER_START_SECONDS", 0.0)  # the grace period is over
    at.run()
    assert any("no worker serves" in warning.value for warning in at.warning)


def test_segment_defaults_to_the_best_model_and_shows_scores(with_two_runs):
    from core.tables import default_model, model_facts

    at = app("pages/5_Segment.py").run()
    assert_clean(at)
    picker = at.selectbox(key="segment_run")
    assert all("pixel F1" in option for option in picker.options), picker.options
    registry = Registry()
    runs = registry.list_runs()
    scores = {run.id: registry.get_evaluation(run.id)["pixel"]["f1"] for run in runs}
    from core.starter import starter_models

    shipped = {f"starter:{m.name}": m.info["validation"]["pixel_f1"] for m in starter_models()}
    best = max({**scores, **shipped}.items(), key=lambda item: item[1])[0]
    assert picker.value == best
    # A colour image into a model trained on grey synthetic nuclei: warned.
    grey_run = max(runs, key=lambda run: run.config.epochs).id
    at.selectbox(key="segment_run").set_value(grey_run).run()
    rgb = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 80, 3)) * 255).astype(np.uint8)).save(rgb, format="PNG")
    at.file_uploader(key="upload").set_value([("tissue.png", rgb.getvalue(), "image/png")]).run()
    assert_clean(at)
    assert any("differs clearly" in w.value and "channels" in w.value for w in at.warning), [w.value for w in at.warning]


def test_segment_takes_several_files_and_a_stack(with_run):
    at = app("pages/5_Segment.py").run()
    files = [(f"cells{i}.png", png_bytes((96 + 8 * i, 80)), "image/png") for i in range(3)]
    files.append(("stack.tif", tiff_stack(5), "image/tiff"))
    at.file_uploader(key="upload").set_value(files).run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    planes = [w for w in at.multiselect if w.label.startswith("Planes of the stack stack.tif (5 planes")]
    assert planes and planes[0].value == [0, 1, 2, 3, 4]
    table = at.dataframe[0].value
    assert list(table["File"]) == ["cells0.png", "cells1.png", "cells2.png", *["stack.tif"] * 5]
    assert list(table["Plane"]) == ["", "", "", "0", "1", "2", "3", "4"]
    assert any(button.proto.label.startswith("Download all as one zip (8 image(s)")
               for button in at.get("download_button"))
    assert len(at.get("image")) >= 8 + 3  # the gallery, then the detail view
    planes[0].set_value([2]).run()
    assert_clean(at)
    assert len(at.dataframe[0].value) == 4


def test_segment_names_a_bad_stack_by_its_file(with_run):
    at = app("pages/5_Segment.py").run()
    broken = tiff_stack(5)[:300]  # a header, then nothing
    at.file_uploader(key="upload").set_value([("broken.tif", broken, "image/tiff")]).run()
    assert_clean(at)
    assert at.error and all("broken.tif" in e.value for e in at.error)
    assert not any("<uploaded bytes>" in e.value or "given as bytes" in e.value for e in at.error)


def test_curves_operating_points_never_show_infinity(with_run):
    at = app("pages/3_Curves.py").run()
    at.slider(key="threshold").set_value(0.99).run()
    assert_clean(at)
    thresholds = list(at.dataframe[0].value["Curve point threshold"])
    assert all(isinstance(t, str) and "inf" not in t.lower() for t in thresholds), thresholds


def test_masks_page_says_why_it_offers_fewer_images(with_run):
    at = app("pages/4_Masks.py").run()
    assert_clean(at)
    assert any("4 of the run's 5 validation images are offered" in c.value for c in at.caption)


def test_masks_page_corrects_saves_and_queues_a_fine_tuning_run(with_run, monkeypatch, tmp_path):
    from core import queue

    monkeypatch.setattr(queue, "ensure_worker", lambda *args, **kwargs: False)  # queue only
    monkeypatch.setenv("UNETLAB_CACHE", str(tmp_path / "cache"))  # a fresh registry for the new run...
    import shutil

    shutil.copytree(with_run["env"]["UNETLAB_CACHE"], tmp_path / "cache")  # ...holding the trained run
    at = app("pages/4_Masks.py").run()
    delete = at.multiselect(key="masks-fix-delete")
    if delete.options:
        delete.set_value([delete.options[0]])
    at.button(key="masks-fix-save").click().run()
    assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any("registered as 'corrections: corrections-synthetic-nuclei'" in s.value for s in at.success)
    folder = tmp_path / "cache" / "corrections" / "corrections-synthetic-nuclei"
    assert len(list((folder / "masks").glob("fix-*.png"))) == 1 and len(list((folder / "images").glob("*.png"))) > 2
    at.button(key="masks-fix-tune").click().run()
    assert_clean(at)
    tuned = [run for run in Registry().list_runs() if run.config.dataset == "folder"]
    assert len(tuned) == 1 and tuned[0].status == "queued"
    config = tuned[0].config
    assert config.init_from == with_run["run_id"]
    assert config.root == str(folder) and config.base_width == 8 and config.depth == 3
