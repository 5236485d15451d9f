"""Mirroring runs to MLflow: with ``UNETLAB_MLFLOW_URI`` set, every run appears there too.

The registry stays the truth; MLflow gets a copy made from it after a run trained and was
evaluated (:func:`core.lifecycle.train_then_evaluate`, the Ray launcher, ``evaluate`` and
``evaluate-model`` call :func:`mirror_run`):

- the run's settings as params (``RunConfig`` fields, ``extra.*`` for extras);
- every stored epoch's metrics at its epoch as step (``train_loss``, ``val_f1``, ...);
- each stored evaluation's headline as ``eval.val.*`` / ``eval.test.*`` metrics (metric keys in
  brackets become dots: ``dsb_map[components]`` -> ``eval.val.dsb_map.components``) and the whole
  summary as ``evaluation_val.json``;
- ``best.pt`` as the artifact ``checkpoints/best.pt``;
- tags: ``unetlab.run_id``, the status, the dataset, the study; a run of a study is the child of
  one parent run per study (tag ``unetlab.study``), created with the first of its runs.

Mirroring the same run again (resumed, re-evaluated) replaces its earlier MLflow run, found by
its ``unetlab.run_id`` tag. The experiment is ``UNETLAB_MLFLOW_EXPERIMENT`` (default
``unetlab``). Any failure (server down, a full disk, a bad URI) is a :class:`TrackingWarning`,
never an error: the run has finished in the registry either way. Requests to a server time out
after 10 s and are retried once (``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``..._MAX_RETRIES`` win when set).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from typing import Any

from core.errors import TrackingWarning
from core.runs import Registry, RunRecord, is_external

ENV_URI = "UNETLAB_MLFLOW_URI"
ENV_EXPERIMENT = "UNETLAB_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "unetlab"
#: MLflow accepts at most this many metrics per batch request.
BATCH = 1000
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


def tracking_uri() -> str | None:
    """The MLflow tracking URI from ``UNETLAB_MLFLOW_URI`` (None: mirroring is off)."""
    return os.environ.get(ENV_URI) or None


def metric_key(key: str) -> str:
    """A metric or param name MLflow accepts: ``dsb_map[components]`` -> ``dsb_map.components``;
    anything else outside letters, digits, ``_ - . /`` and space becomes ``_``."""
    key = key.replace("[", ".").replace("]", "")
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key)


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """A config dict as MLflow params: ``extra`` flattened to ``extra.KEY``, values as text (500 chars)."""
    params = {}
    for key, value in config.items():
        if key == "extra" and isinstance(value, dict):
            params.update({f"extra.{metric_key(str(k))}": str(v)[:500] for k, v in value.items()})
        else:
            params[metric_key(key)] = str(value)[:500]
    return params


def numeric(value: Any) -> float | None:
    """A finite float for MLflow, or None for text, booleans, None and NaN (MLflow stores NaN, but a
    missing score is clearer as no point at all)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def epoch_metrics(epochs: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """(key, value, step) of every numeric per-epoch metric; the epoch is the step."""
    points = []
    for row in epochs:
        step = int(row["epoch"])
        for key, value in row.items():
            number = numeric(value)
            if key != "epoch" and number is not None:
                points.append((metric_key(key), number, step))
    return points


def evaluation_metrics(split: str, summary: dict[str, Any]) -> dict[str, float]:
    """``eval.SPLIT.KEY`` -> value of an evaluation's headline (see :meth:`core.evaluate.Evaluation.headline`)."""
    from core.evaluate import Evaluation

    headline = Evaluation(run_id=summary.get("run_id", ""), split=split, summary=summary).headline()
    metrics = {}
    for key, value in headline.items():
        number = numeric(value)
        if number is not None:
            metrics[f"eval.{split}.{metric_key(key)}"] = number
    return metrics


def _client(uri: str):
    """An MlflowClient for ``uri`` whose requests give up quickly when a server is down."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's import-time deprecation notices
        from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - another process created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _tagged(client: Any, experiment_id: str, tag: str, value: str) -> list[Any]:
    escaped = value.replace("'", "\\'")
    return client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{escaped}'", max_results=100)


def study_parent(client: Any, experiment_id: str, study: str) -> str:
    """The MLflow run that stands for a study (created on first use); its runs are its children."""
    found = _tagged(client, experiment_id, "unetlab.study_parent", study)
    if found:
        return found[0].info.run_id
    parent = client.create_run(experiment_id, run_name=f"study {study}",
                               tags={"unetlab.study_parent": study, "unetlab.study": study})
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def _mirror(record: RunRecord, registry: Registry, uri: str) -> str:
    from mlflow.entities import Metric, Param

    client = _client(uri)
    experiment_id = _experiment_id(client, os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT)
    config = record.config
    for earlier in _tagged(client, experiment_id, "unetlab.run_id", record.id):
        client.delete_run(earlier.info.run_id)  # mirrored before (resumed, re-evaluated): replaced
    tags = {"unetlab.run_id": record.id, "unetlab.status": record.status, "unetlab.dataset": config.dataset,
            "unetlab.method": str(config.extra.get("method", "U-Net")) if is_external(config) else "U-Net"}
    if config.study:
        tags["unetlab.study"] = config.study
        tags["mlflow.parentRunId"] = study_parent(client, experiment_id, config.study)
    start = int((record.started or record.created) * 1000)
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"{config.label()} ({record.id[-6:]})")
    mlflow_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(key, value) for key, value in flat_params(config.to_dict()).items()]
    metrics = [Metric(key, value, now, step) for key, value, step in epoch_metrics(registry.epochs(record.id))]
    for split in ("val", "test"):
        summary = registry.get_evaluation(record.id, split)
        if summary is None:
            continue
        metrics += [Metric(key, value, now, 0) for key, value in evaluation_metrics(split, summary).items()]
        client.log_dict(mlflow_id, summary, f"evaluation_{split}.json")
    for first in range(0, max(len(params), 1), 100):  # MLflow takes at most 100 params per request
        client.log_batch(mlflow_id, params=params[first:first + 100])
    for first in range(0, len(metrics), BATCH):
        client.log_batch(mlflow_id, metrics=metrics[first:first + BATCH])
    if record.best_checkpoint.is_file():
        client.log_artifact(mlflow_id, str(record.best_checkpoint), artifact_path="checkpoints")
    end = int((record.finished or time.time()) * 1000)
    client.set_terminated(mlflow_id, _STATUS.get(record.status, "FINISHED"), end_time=end)
    return mlflow_id


def mirror_run(run_id: str, registry: Registry | None = None, uri: str | None = None) -> str | None:
    """Mirror run ``run_id`` (its registry record, epochs, evaluations, best checkpoint) to MLflow.

    Returns the MLflow run id, or None when mirroring is off (no ``UNETLAB_MLFLOW_URI``) or failed;
    a failure is a :class:`TrackingWarning` naming the run, the URI and the cause, never an error.
    """
    uri = uri or tracking_uri()
    if not uri:
        return None
    try:
        registry = registry or Registry()
        return _mirror(registry.get_run(run_id), registry, uri)
    except Exception as error:  # noqa: BLE001 - MLflow being down must never fail a run
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        warnings.warn(TrackingWarning(f"run {run_id} was not mirrored to MLflow at {uri} ({type(error).__name__}: "
                                      f"{cause}); the run itself is unaffected and stays in the registry"),
                      stacklevel=2)
        return None
