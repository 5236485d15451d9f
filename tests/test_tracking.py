"""Runs mirrored to MLflow (UNETLAB_MLFLOW_URI): a local file store sees the run, its params, per-epoch
metrics, evaluation and best checkpoint, a study as parent; MLflow being unreachable never fails a run."""

from __future__ import annotations

import time
import warnings

import pytest

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is not installed (pip install -e .)")

from core.config import RunConfig  # noqa: E402
from core.errors import TrackingWarning  # noqa: E402
from core.runs import Registry  # noqa: E402
from core.tracking import epoch_metrics, flat_params, metric_key, mirror_run  # noqa: E402

TINY = dict(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="none", epochs=1, steps_per_epoch=2,
            batch_size=2, patch_size=64, depth=3, base_width=8, threads=1)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """A tiny run of study 'ecosystem', trained and evaluated with a local MLflow file store set."""
    from core.lifecycle import train_then_evaluate

    base = tmp_path_factory.mktemp("tracking")
    uri = f"file:{base / 'mlruns'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETLAB_CACHE", str(base / "cache"))
    mp.setenv("UNETLAB_CHECKPOINTS", str(base / "checkpoints"))
    mp.setenv("UNETLAB_MLFLOW_URI", uri)
    registry = Registry(base / "cache" / "registry.sqlite")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)  # a mirroring failure fails this test
        outcome = train_then_evaluate(RunConfig(**TINY, study="ecosystem"), registry=registry, show_progress=False)
    yield registry, outcome.result.run_id, uri
    mp.undo()


def runs_of(uri: str):
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("unetlab")
    return client, client.search_runs([experiment.experiment_id])


def test_the_file_store_sees_the_run_its_params_metrics_and_checkpoint(mirrored, tmp_path):
    registry, run_id, uri = mirrored
    client, runs = runs_of(uri)
    (child,) = [run for run in runs if run.data.tags.get("unetlab.run_id") == run_id]
    (parent,) = [run for run in runs if run.data.tags.get("unetlab.study_parent") == "ecosystem"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.info.status == "FINISHED"
    params = child.data.params
    assert params["dataset"] == "synthetic-nuclei" and params["train_fraction"] == "0.5"
    assert params["base_width"] == "8" and params["study"] == "ecosystem"

    # Per-epoch metrics with the epoch as step: the untrained epoch 0 and the trained epoch 1.
    history = client.get_metric_history(child.info.run_id, "val_f1")
    stored = {row["epoch"]: row["val_f1"] for row in registry.epochs(run_id)}
    assert sorted(point.step for point in history) == [0, 1]
    assert {point.step: point.value for point in history} == pytest.approx(stored)
    evaluation = registry.get_evaluation(run_id, "val")
    assert child.data.metrics["eval.val.pixel_f1"] == pytest.approx(evaluation["pixel"]["f1"])
    assert "eval.val.dsb_map.components" in child.data.metrics

    names = {item.path for item in client.list_artifacts(child.info.run_id)}
    assert {"checkpoints", "evaluation_val.json"} <= names
    local = client.download_artifacts(child.info.run_id, "checkpoints/best.pt", str(tmp_path))
    assert open(local, "rb").read() == registry.get_run(run_id).best_checkpoint.read_bytes()


def test_mirroring_again_replaces_the_earlier_copy(mirrored):
    registry, run_id, uri = mirrored
    assert mirror_run(run_id, registry) is not None
    _, runs = runs_of(uri)
    assert len([run for run in runs if run.data.tags.get("unetlab.run_id") == run_id]) == 1
    assert len([run for run in runs if run.data.tags.get("unetlab.study_parent") == "ecosystem"]) == 1


def test_mlflow_unreachable_is_a_warning_and_the_run_still_finishes(monkeypatch, tmp_path):
    from core.lifecycle import train_then_evaluate

    monkeypatch.setenv("UNETLAB_MLFLOW_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = time.perf_counter()
    with pytest.warns(TrackingWarning, match="not mirrored to MLflow at http://127.0.0.1:9"):
        outcome = train_then_evaluate(RunConfig(**{**TINY, "steps_per_epoch": 1}), evaluate=False,
                                      show_progress=False)
    assert outcome.status == "finished" and Registry().get_run(outcome.result.run_id).status == "finished"
    assert time.perf_counter() - started < 120
    with pytest.warns(TrackingWarning, match="unaffected"):
        assert mirror_run(outcome.result.run_id, uri="nosuchscheme://x") is None


def test_names_and_values_become_what_mlflow_accepts():
    assert metric_key("dsb_map[kmeans-watershed]") == "dsb_map.kmeans-watershed"
    assert metric_key("a:b(c)") == "a_b_c_"
    params = flat_params({"seed": 3, "root": None, "extra": {"method": "external: x"}})
    assert params == {"seed": "3", "root": "None", "extra.method": "external: x"}
    rows = [{"epoch": 0, "val_f1": 0.2, "note": "untrained model"}, {"epoch": 1, "val_f1": float("nan"),
                                                                     "stopped": True, "train_loss": 0.5}]
    assert epoch_metrics(rows) == [("val_f1", 0.2, 0), ("train_loss", 0.5, 1)]
