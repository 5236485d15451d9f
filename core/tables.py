"""The home of every table U-Net Lab shows: runs, studies, datasets and their text.

Each table is a pandas DataFrame (or a small dataclass of them) built from registry
records and stored evaluations, with no Streamlit in sight, so the pages, the study CLI
and the report show the same columns and the tests call the builders directly. The short
texts shown beside them (durations, times, a run's progress sentence) live here too.

Every number shown names what it is: metric columns use the exact display names of
:data:`core.metrics.METRIC_NAMES` (pixel metrics with the threshold they were computed at,
instance metrics with the post-processing method in brackets), and tables carry the counts
behind the rates and the split the numbers were computed on.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from core.config import AUGMENTATION_LEVELS, RunConfig
from core.errors import UNetLabError
from core.metrics import METRIC_NAMES, metric_name
from core.runs import EXTERNAL_PREFIX

if TYPE_CHECKING:
    from core.user_datasets import UserDataset

#: Column titles of the config fields that :func:`runs_table` shows after its scores (the
#: fields it shows first have titles in :data:`SETTING_COLUMNS` too).
EXTRA_CONFIG_COLUMNS: dict[str, str] = {
    "image_size": "Image size (0 = native)",
    "validation_fraction": "Validation fraction",
    "split_strategy": "Split strategy",
    "group_pattern": "Group pattern",
    "batch_size": "Batch size",
    "patch_size": "Patch size",
    "optimizer": "Optimizer",
    "learning_rate": "Learning rate",
    "lr_schedule": "LR schedule",
    "weight_decay": "Weight decay",
    "ema_decay": "Weight averaging (EMA decay per step, 0 = off)",
    "early_stopping_patience": "Early stopping patience (0 = off)",
    "best_by": "Best epoch chosen by",
    "device": "Device",
    "precision": "Precision",
    "channels_last": "Channels last",
    "threads": "Threads (0 = torch's default)",
    "tile_size": "Tile size",
    "notes": "Notes",
}
#: The column title of every RunConfig field (``extra`` aside) in the runs and study tables.
SETTING_COLUMNS: dict[str, str] = {
    "dataset": "Dataset", "root": "Folder", "train_fraction": "Train fraction", "augmentation": "Augmentation",
    "seed": "Seed", "epochs": "Epochs", "steps_per_epoch": "Steps per epoch", "base_width": "Model width",
    "depth": "Depth", "loss": "Loss", "threshold": "Threshold", "study": "Study", **EXTRA_CONFIG_COLUMNS,
}
#: RunConfig fields that record how or where a run was made, not the setting it measures: two
#: runs that differ only in these (and in the seed) are repeats of one setting. ``device`` and
#: ``threads`` can change the last digits of a result but not what a user compares; ``precision``
#: (bf16 against fp32 training) is a setting.
BOOKKEEPING_FIELDS: tuple[str, ...] = ("study", "notes", "extra", "device", "threads")
#: The field whose runs are repeats of one setting.
REPEAT_FIELD = "seed"
#: Fields a comparison grid lays out: it is drawn per dataset (and folder), with train fractions
#: as columns and augmentation levels as rows. Every other setting field is the grid's *setting*.
GRID_AXIS_FIELDS: tuple[str, ...] = ("dataset", "root", "train_fraction", "augmentation")
#: The runs and study tables' column naming each run's setting (see :func:`setting_label`).
SETTING_COLUMN = "Setting"
#: The runs table's column of the optimiser steps a run may take (epochs x steps per epoch).
BUDGET_COLUMN = "Budget (optimizer steps)"
#: The runs table's column saying how training ended (all epochs, or early stopping).
STOPPED_COLUMN = "Stopped"
#: The report's results table's column of each run's number of training images (from its split).
TRAINING_IMAGES_COLUMN = "Training images"
#: The runs and study tables' column saying where each run trained (see :func:`trained_on_text`).
TRAINED_ON_COLUMN = "Trained on (node, device)"
#: The study table's column of each run's duration.
RUN_TIME_COLUMN = "Run time (s, training + evaluation)"
#: What the negative-class F1 column means, shown as its help in tables.
NEGATIVE_CLASS_F1_HELP = ("F1 of the pixels outside the positive class: the membrane F1 on ISBI 2012/2013 "
                          "(positive = cell interior), the background F1 on nuclei and mitochondria sets")
#: The setting that names how a run's model was made: :data:`OUR_METHOD` for a U-Net trained
#: here, ``"external: NAME"`` for another tool's model scored by ``unetlab evaluate-model``
#: (stored in the bookkeeping fields ``extra["method"]`` and ``notes``, yet part of the setting:
#: an external run is never a repeat of one of ours, whatever their other fields).
METHOD_FIELD = "method"
#: The method of every run trained here.
OUR_METHOD = "U-Net (trained here)"
#: The fields of a run's training budget (an external run has none).
BUDGET_FIELDS: tuple[str, ...] = ("epochs", "steps_per_epoch", "early_stopping_patience")
#: The runs and study tables' column of each run's method (only where an external run is shown).
METHOD_COLUMN = "Method"
#: Columns a saved study table needs before the Compare page can draw its grid.
RESULTS_TABLE_COLUMNS: tuple[str, ...] = ("Run", "Dataset", "Train fraction", "Augmentation", "Seed")


# --------------------------------------------------------------------------------------
# Small formatting helpers
# --------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``"1 min 15 s"``; None or NaN -> ``"unknown"``."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def format_time(timestamp: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS`` (empty for None)."""
    return "" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


#: Decimals of every score, loss and rate shown on screen (one rule: tables, captions, figures).
SCORE_DECIMALS = 3
#: What a table cell shows for a run that has no stored evaluation (instead of "None").
NOT_EVALUATED = "not evaluated"


def format_score(value: float | None) -> str:
    """A score, loss or rate with :data:`SCORE_DECIMALS` decimals; ``"not evaluated"`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_EVALUATED
    return f"{float(value):.{SCORE_DECIMALS}f}"


def format_count(value: float | None) -> str:
    """A count with thousands separators (``12,345``); ``"not evaluated"`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_EVALUATED
    return f"{int(round(float(value))):,}"


def instance_column(key: str, method: str) -> str:
    """Column name of an instance metric for one post-processing method."""
    return f"{METRIC_NAMES[key]} [{method}]"


# --------------------------------------------------------------------------------------
# Settings: which runs are repeats of the same setting
# --------------------------------------------------------------------------------------
# One rule everywhere (grids, comparisons, the study table, the report, the Compare page):
# two runs measure the same setting when every RunConfig field is equal except the seed and
# the bookkeeping fields (BOOKKEEPING_FIELDS). Runs of different settings are never averaged.


def run_method(config: RunConfig | Mapping[str, Any]) -> str:
    """How a run's model was made: ``"external: NAME"`` for another tool's model (its
    ``extra["method"]``), else :data:`OUR_METHOD`.

    >>> run_method(RunConfig())
    'U-Net (trained here)'
    >>> run_method(RunConfig(extra={"method": "external: cellpose"}))
    'external: cellpose'
    """
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    extra = values.get("extra")
    method = str(extra.get(METHOD_FIELD, "")) if isinstance(extra, Mapping) else ""
    return method if method.startswith(EXTERNAL_PREFIX) else OUR_METHOD


def setting_fields(config: RunConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The fields that define a run's setting: every config field but the seed and bookkeeping,
    and the run's method (:func:`run_method`, under :data:`METHOD_FIELD`)."""
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    fields = {key: value for key, value in values.items() if key != REPEAT_FIELD and key not in BOOKKEEPING_FIELDS}
    return {**fields, METHOD_FIELD: run_method(values)}


def setting_key(config: RunConfig | Mapping[str, Any]) -> str:
    """A string equal for two configs exactly when they measure the same setting (see
    :data:`BOOKKEEPING_FIELDS`): sorted JSON of :func:`setting_fields`.

    >>> setting_key(RunConfig(seed=1, device="cpu")) == setting_key(RunConfig(seed=2, threads=2))
    True
    >>> setting_key(RunConfig(epochs=3)) == setting_key(RunConfig(epochs=6))
    False
    >>> setting_key(RunConfig()) == setting_key(RunConfig(extra={"method": "external: cellpose"}))
    False
    """
    import json

    return json.dumps(setting_fields(config), sort_keys=True, default=str)


def varying_fields(configs: Sequence[RunConfig | Mapping[str, Any]], exclude: Sequence[str] = ()) -> list[str]:
    """The setting fields whose value differs among ``configs``, less ``exclude``: the method
    (:data:`METHOD_FIELD`) first, then RunConfig fields in their order.

    The seed and the bookkeeping fields never count.
    """
    rows = [setting_fields(config) for config in configs]
    fields = [METHOD_FIELD, *(name for name in RunConfig.__dataclass_fields__ if name != REPEAT_FIELD
                              and name not in BOOKKEEPING_FIELDS)]
    return [name for name in fields if name not in exclude and len({repr(row.get(name)) for row in rows}) > 1]


def _field_text(name: str, value: Any) -> str:
    if name == METHOD_FIELD:  # the method names itself: "U-Net (trained here)", "external: cellpose"
        return str(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = "none"
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{name.replace('_', ' ')} {value}"


def budget_text(epochs: Any, steps_per_epoch: Any, patience: Any = None) -> str:
    """``"300 steps (12 epochs x 25)"``, or ``"at most 300 steps (12 epochs x 25), patience 5"``."""
    try:
        epochs, steps = int(epochs), int(steps_per_epoch)
    except (TypeError, ValueError):
        return ""
    text = f"{epochs * steps} steps ({epochs} epoch{'' if epochs == 1 else 's'} x {steps})"
    if patience not in (None, 0) and not (isinstance(patience, float) and math.isnan(patience)):
        text = f"at most {text}, patience {int(patience)}"
    return text


def setting_label(config: RunConfig | Mapping[str, Any], fields: Sequence[str]) -> str:
    """A run's setting in words: its training budget, then the value of each of ``fields``.

    ``fields`` are the fields that vary among the runs shown together (:func:`varying_fields`,
    less the grid's axes), so two runs with the same label there are repeats of one setting,
    e.g. ``"600 steps (24 epochs x 25), learning rate 0.003"``. An external run (see
    :func:`run_method`) has no training budget: its label starts with its method, e.g.
    ``"external: cellpose"``; our runs name theirs (``"U-Net (trained here)"``) where the
    method is among ``fields``.
    """
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    # A saved table's Method column (or the method of table_settings' values), else the config's;
    # an empty cell (NaN, "") is a run of ours.
    given = [value for value in (values.get(METHOD_COLUMN), values.get(METHOD_FIELD)) if isinstance(value, str) and value]
    method = given[0] if given else run_method(values)
    values[METHOD_FIELD] = method
    budget_fields = BUDGET_FIELDS
    if method.startswith(EXTERNAL_PREFIX):
        parts = [str(method)]
        fields = [name for name in fields if name not in budget_fields and name != METHOD_FIELD]
    else:
        parts = [budget_text(values.get("epochs"), values.get("steps_per_epoch"),
                             values.get("early_stopping_patience"))]
        if not parts[0]:
            parts = [_field_text(name, values.get(name)) for name in budget_fields if name in fields]
    parts += [_field_text(name, values.get(name)) for name in fields if name not in budget_fields]
    return ", ".join(part for part in parts if part) or "one setting"


def _column_title(name: str) -> str:
    """The runs and study tables' column of a setting field (:data:`METHOD_COLUMN` for the method)."""
    return METHOD_COLUMN if name == METHOD_FIELD else SETTING_COLUMNS[name]


def _table_setting_fields(table: pd.DataFrame) -> list[str]:
    """Setting fields (grid axes aside) that have a column in ``table``, the method first."""
    method = [METHOD_FIELD] if METHOD_COLUMN in table.columns else []
    return method + [name for name, title in SETTING_COLUMNS.items() if title in table.columns
                     and name != REPEAT_FIELD and name not in BOOKKEEPING_FIELDS and name not in GRID_AXIS_FIELDS]


def table_settings(table: pd.DataFrame) -> pd.Series:
    """Each row's setting label (grid axes and seed aside): the table's :data:`SETTING_COLUMN`
    when it has one, else built from its setting columns (a table saved before that column)."""
    if SETTING_COLUMN in table.columns:
        return table[SETTING_COLUMN].fillna("unknown setting").astype(str)
    fields = _table_setting_fields(table)
    varying = [name for name in fields if table[_column_title(name)].nunique(dropna=False) > 1]
    labels = []
    for _, row in table.iterrows():
        values = {name: row[_column_title(name)] for name in fields}
        labels.append(setting_label(values, varying))
    return pd.Series(labels, index=table.index, dtype=object)


def grid_groups(table: pd.DataFrame) -> pd.Series:
    """Each row's grid: its setting label, prefixed with the dataset (and folder) where the table
    holds several. Runs in different grid groups are never averaged together."""
    labels = table_settings(table)
    for title in ("Folder", "Dataset"):
        if title in table.columns and table[title].fillna("").nunique() > 1:
            labels = table[title].fillna("").astype(str) + ", " + labels
    return labels


def setting_groups(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of each grid group (:func:`grid_groups`), the group with most runs first."""
    if table.empty:
        return {}
    labels = grid_groups(table)
    order = sorted(dict.fromkeys(labels), key=lambda label: -int((labels == label).sum()))
    return {label: table[labels == label] for label in order}


def variation(table: pd.DataFrame) -> dict[str, list[Any]]:
    """Setting fields (grid axes aside) whose values differ among the rows: name -> sorted values."""
    out = {}
    for name in _table_setting_fields(table):
        values = table[_column_title(name)].dropna().unique().tolist()
        if len(values) > 1:
            try:
                values = sorted(values)
            except TypeError:
                values = sorted(values, key=str)
        if len(values) > 1:
            out[name] = values
    if not out and SETTING_COLUMN in table.columns and table[SETTING_COLUMN].nunique() > 1:
        out["setting"] = sorted(table[SETTING_COLUMN].dropna().unique().tolist())
    return out


def variation_text(table: pd.DataFrame) -> str:
    """``"varies: epochs (3, 6)"``; empty when the rows hold one setting (grid axes aside)."""
    found = variation(table)
    if not found:
        return ""
    return "varies: " + "; ".join(
        f"{name.replace('_', ' ')} ({', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)})"
        for name, values in found.items())


# --------------------------------------------------------------------------------------
# Datasets: built-in ones and folders the user registered by path
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetChoice:
    """One entry of the dataset picker: a loader name and an optional folder."""

    label: str
    dataset: str
    root: str | None


def dataset_choices(specs: Sequence[Any], user: Sequence[UserDataset]) -> list[DatasetChoice]:
    """Built-in datasets that need no files, then registered folders; default first.

    Built-in datasets that need their files (``needs_root``) are listed through the
    folders the user registered for them.
    """
    choices = [DatasetChoice(f"{spec.name} (built-in)", spec.name, None) for spec in specs if not spec.needs_root]
    choices.sort(key=lambda choice: choice.dataset != "synthetic-nuclei")
    choices += [DatasetChoice(entry.label, entry.dataset, entry.root) for entry in user]
    return choices


def datasets_table(specs: Sequence[Any], user: Sequence[UserDataset]) -> pd.DataFrame:
    """One row per built-in dataset and per registered folder, for the home page."""
    rows = []
    for spec in specs:
        rows.append({
            "Dataset": spec.name,
            "Title": spec.title,
            "Positive class": spec.positive_class,
            "Kind": spec.kind,
            "Splits": ", ".join(spec.splits),
            "Files": "needs a folder" if spec.needs_root else "built-in (no files)",
            "Folder": "",
        })
    for entry in user:
        rows.append({"Dataset": entry.label, "Title": f"registered folder ({entry.dataset} layout)",
                     "Positive class": "", "Kind": "", "Splits": "train",
                     "Files": "registered by path", "Folder": entry.root})
    return pd.DataFrame(rows, columns=["Dataset", "Title", "Positive class", "Kind", "Splits", "Files", "Folder"])


# --------------------------------------------------------------------------------------
# Run progress and tables
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressView:
    """What the progress bar of a run shows: ``fraction`` in [0, 1] and a sentence."""

    fraction: float
    text: str


def progress_view(status: str, progress: Mapping[str, Any], error: str | None = None) -> ProgressView:
    """Progress bar value and caption for a run's registry status and progress dict."""
    epochs = int(progress.get("epochs") or 0)
    if status == "finished":
        if progress.get("stop_reason"):
            return ProgressView(1.0, f"finished: {progress['stop_reason']} (at most {epochs})")
        return ProgressView(1.0, f"finished: {epochs} epoch{'' if epochs == 1 else 's'}" if epochs else "finished")
    if status == "queued":
        return ProgressView(0.0, "queued: waits for a free training slot")
    if status == "evaluating":
        return ProgressView(1.0, f"evaluating: training done ({epochs} epoch{'' if epochs == 1 else 's'}); scoring "
                                 "the best checkpoint on the validation images with every metric")
    if status in ("failed", "cancelled"):
        reason = (error or "").strip().splitlines()[0][:160] if error else ""
        done = progress.get("epoch")
        where = f" during epoch {done}/{epochs}" if done and epochs else ""
        return ProgressView(_fraction(progress), f"{status}{where}" + (f": {reason}" if reason else ""))
    epoch, step = int(progress.get("epoch") or 0), int(progress.get("step") or 0)
    steps = int(progress.get("steps_per_epoch") or 0)
    if progress.get("waiting"):  # e.g. a Ray run waiting for a worker with free resources
        return ProgressView(0.0, f"running: {progress['waiting']}")
    if not epochs:
        return ProgressView(0.0, "running: loading data and validating the untrained model")
    parts = [f"epoch {epoch}/{epochs}", f"step {step}/{steps}"]
    if progress.get("phase") == "validating":
        parts.append("validating")
    if progress.get("train_loss") is not None:
        parts.append(f"train loss {progress['train_loss']:.4f}")
    parts.append(f"elapsed {format_duration(progress.get('elapsed_seconds'))}")
    parts.append(f"ETA {format_duration(progress.get('eta_seconds'))}")
    return ProgressView(_fraction(progress), "running: " + ", ".join(parts))


def _fraction(progress: Mapping[str, Any]) -> float:
    epochs, steps = int(progress.get("epochs") or 0), int(progress.get("steps_per_epoch") or 0)
    if not epochs or not steps:
        return 0.0
    done = (int(progress.get("epoch") or 1) - 1) * steps + int(progress.get("step") or 0)
    return float(min(1.0, max(0.0, done / (epochs * steps))))


#: Fields :meth:`RunConfig.label` already names (with the seed), left out of what a run label adds.
LABEL_FIELDS: tuple[str, ...] = ("dataset", "train_fraction", "augmentation")


def run_labels(records: Sequence[Any]) -> dict[str, str]:
    """Run id -> a label that tells the runs apart: dataset, fraction, level and seed, then every
    setting that differs within ``records`` (e.g. ``"synthetic-nuclei 50% none s0, epochs 2"``).

    Runs with the same label after that (repeats of one setting and seed) get the last 6
    characters of their id, so no two labels are equal. The full settings are in
    :func:`run_settings_table`.
    """
    varying = varying_fields([record.config for record in records], exclude=LABEL_FIELDS)
    labels = {}
    for record in records:
        values = {**record.config.to_dict(), METHOD_FIELD: run_method(record.config)}
        # RunConfig.label() names an external run's method, which has no training budget; ours is
        # named where the method varies.
        skip = (METHOD_FIELD, *BUDGET_FIELDS) if run_method(values) != OUR_METHOD else ()
        parts = [_field_text(name, values.get(name)) for name in varying if name not in skip]
        labels[record.id] = ", ".join([record.config.label(), *parts])
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {run_id: f"{label} ({run_id[-6:]})" if counts[label] > 1 else label for run_id, label in labels.items()}


def run_settings_table(records: Sequence[Any], labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Every setting of each run (one row per run, :data:`SETTING_COLUMNS` titles), its label first:
    what the pages show in an expander beside a run picker."""
    labels = labels or run_labels(records)
    rows = [{"Label": labels.get(record.id, record.id), "Run": record.id, METHOD_COLUMN: run_method(record.config),
             **config_columns(record.config)} for record in records]
    methods = [METHOD_COLUMN] if any(row[METHOD_COLUMN] != OUR_METHOD for row in rows) else []
    return pd.DataFrame(rows, columns=["Label", "Run", *methods, *SETTING_COLUMNS.values()])


def status_table(records: Sequence[Any]) -> pd.DataFrame:
    """Runs with their status and a one-line progress, for the home page and the queue."""
    rows = [{"Run": record.id, "Dataset": record.config.dataset, "Settings": record.config.label(),
             "Status": record.status,
             "Progress": progress_view(record.status, record.progress, record.error).text,
             "Created": format_time(record.created), "Finished": format_time(record.finished)}
            for record in records]
    return pd.DataFrame(rows, columns=["Run", "Dataset", "Settings", "Status", "Progress", "Created", "Finished"])


def evaluation_state(record: Any, has_evaluation: bool) -> str:
    """``"done"``, ``"running"`` (the run's status is ``evaluating``) or ``"not done"``."""
    if has_evaluation:
        return "done"
    return "running" if record.status == "evaluating" else "not done"


def runs_table(records: Sequence[Any], evaluations: Mapping[str, Mapping[str, Any] | None],
               method: str = "components") -> pd.DataFrame:
    """One row per run: settings, status and the headline metrics of its stored evaluation.

    Parameters
    ----------
    records : sequence of core.runs.RunRecord
    evaluations : run id -> stored evaluation summary (``Registry.get_evaluation``) or None
    method : post-processing method whose instance metrics are shown

    Pixel metric columns name the threshold (each run's own; the column uses the most
    common one and a ``Threshold`` column gives each run's). Empty cells: not evaluated.
    """
    rows = []
    thresholds = [record.config.threshold for record in records] or [0.5]
    threshold = max(set(thresholds), key=thresholds.count)
    varying = varying_fields([record.config for record in records], exclude=GRID_AXIS_FIELDS)
    for record in records:
        config: RunConfig = record.config
        row: dict[str, Any] = config_columns(config)
        row.update({
            "Run": record.id,
            "Study": record.study or "",
            "Status": record.status,
            SETTING_COLUMN: setting_label(config, varying),
            BUDGET_COLUMN: config.epochs * config.steps_per_epoch,
            STOPPED_COLUMN: stopped_text(record),
            "Created": format_time(record.created),
            TRAINED_ON_COLUMN: trained_on_text(record),
        })
        row[METHOD_COLUMN] = run_method(config)
        summary = evaluations.get(record.id)
        row.update(_evaluation_columns(summary, method, threshold))
        rows.append(row)
    # What a comparison reads first (the varied settings and the scores), then the rest; the
    # method where another tool's model is among the runs.
    methods = [METHOD_COLUMN] if any(row[METHOD_COLUMN] != OUR_METHOD for row in rows) else []
    columns = ["Run", "Dataset", *methods, "Status", "Train fraction", "Augmentation", "Seed", SETTING_COLUMN,
               *_evaluation_columns(None, method, threshold).keys(), STOPPED_COLUMN, BUDGET_COLUMN,
               "Epochs", "Steps per epoch", "Model width", "Depth", "Loss", "Threshold", "Study", "Folder", "Created",
               TRAINED_ON_COLUMN, *EXTRA_CONFIG_COLUMNS.values()]
    return pd.DataFrame(rows, columns=columns)


def config_columns(config: RunConfig) -> dict[str, Any]:
    """A config as table cells under :data:`SETTING_COLUMNS` titles (None sizes, threads and
    patience as 0, no folder or group pattern as ""), so a saved CSV reads back the same."""
    values = config.to_dict()
    cells = {title: values[name] for name, title in SETTING_COLUMNS.items()}
    for name, empty in (("root", ""), ("study", ""), ("group_pattern", ""), ("image_size", 0), ("threads", 0),
                        ("early_stopping_patience", 0)):
        if values[name] is None:
            cells[SETTING_COLUMNS[name]] = empty
    return cells


def trained_on_text(record: Any) -> str:
    """Where a run trained, e.g. ``"gpu-node-2 (10.0.0.7, node 3f2a9c1e), cuda (NVIDIA H100), via Ray"``;
    "" when not recorded (runs made before it was, or not trained yet)."""
    node, device, executor = (getattr(record, name, None) for name in ("node", "device", "executor"))
    if not node and not device:
        return ""
    text = ", ".join(part for part in (node, device) if part)
    return f"{text}, via Ray" if executor == "ray" else text


def stopped_text(record: Any) -> str:
    """How training ended: early stopping's sentence, ``"after all 10 epochs"``, or "" while
    the run has not finished training."""
    reason = (record.progress or {}).get("stop_reason")
    if reason:
        return str(reason).replace("stopped early", "early", 1)
    if record.status in ("finished", "evaluating"):
        epochs = record.config.epochs
        return f"after all {epochs} epoch{'' if epochs == 1 else 's'}"
    return ""


def split_label(summary: Mapping[str, Any]) -> str:
    """Which images an evaluation scored, in a few words: the official test split, or the
    validation part and how it was cut (random, a contiguous block with a gap, whole groups);
    and whether its predictions were averaged over flips (``evaluate --tta``), which scores a
    little higher than a plain prediction of the same weights."""
    label = _scored_images(summary)
    return f"{label}, predictions averaged over 4 flips" if summary.get("flip_tta") else label


def _scored_images(summary: Mapping[str, Any]) -> str:
    if summary.get("split") == "test":
        return "official test split"
    if summary.get("split") != "val":
        return str(summary.get("split"))
    description = str(summary.get("split_description", ""))
    for start, label in (("contiguous block", "validation part: " + description.split(" (")[0]),
                         ("split by group", "validation part: whole groups"),
                         ("random split", "validation part: random images")):
        if description.startswith(start):
            return label
    return "validation part: random images"  # evaluations stored before splits were described


def _evaluation_columns(summary: Mapping[str, Any] | None, method: str, threshold: float) -> dict[str, Any]:
    nan = float("nan")
    columns = {
        "Evaluated on": "",
        "Validation images": nan,
        "Best epoch": nan,
        metric_name("pixel_f1", threshold): nan,
        metric_name("pixel_precision", threshold): nan,
        metric_name("pixel_recall", threshold): nan,
        metric_name("pixel_iou", threshold): nan,
        metric_name("pixel_f1_all_positive"): nan,
        metric_name("pixel_f1_negative", threshold): nan,
        metric_name("pixel_tp", threshold): nan,
        metric_name("pixel_fp", threshold): nan,
        metric_name("pixel_fn", threshold): nan,
        METRIC_NAMES["roc_auc"]: nan,
        METRIC_NAMES["average_precision"]: nan,
        instance_column("dsb_map", method): nan,
        instance_column("paper_map", method): nan,
        instance_column("ap50", method): nan,
        instance_column("tp50", method): nan,
        instance_column("fp50", method): nan,
        instance_column("fn50", method): nan,
    }
    if not summary:
        return columns
    pixel, curves = summary["pixel"], summary["curves"]
    instances = summary.get("instances", {}).get(method, {})
    values = [
        split_label(summary),
        summary.get("n_images", nan),
        summary.get("epoch", nan),
        pixel["f1"], pixel["precision"], pixel["recall"], pixel["iou"], pixel["f1_all_positive"],
        pixel.get("f1_negative", nan), pixel["tp"], pixel["fp"], pixel["fn"],
        curves["roc_auc"], curves["average_precision"],
        instances.get("dsb_map", nan), instances.get("paper_map", nan), instances.get("ap50", nan),
        instances.get("tp50", nan), instances.get("fp50", nan), instances.get("fn50", nan),
    ]
    return dict(zip(columns, values))


def evaluated_methods(summaries: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The post-processing methods to offer for instance scores: every method of
    :data:`core.postprocess.METHODS`, then any other method the stored evaluations scored (e.g.
    ``seeded-watershed``, which only mask+contour runs are scored with), in the order found.

    >>> evaluated_methods({"a": {"instances": {"components": {}, "seeded-watershed": {}}}, "b": None})
    ['components', 'watershed', 'kmeans-watershed', 'seeded-watershed']
    """
    from core.postprocess import METHODS

    methods = list(METHODS)
    for summary in summaries.values():
        methods += [name for name in (summary or {}).get("instances", {}) if name not in methods]
    return methods


def comparable_metrics(table: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a :func:`runs_table` that have at least one value."""
    settings = {"Train fraction", "Seed", "Epochs", "Steps per epoch", "Model width", "Depth", "Threshold",
                "Validation images", "Best epoch", RUN_TIME_COLUMN, BUDGET_COLUMN, TRAINING_IMAGES_COLUMN,
                *EXTRA_CONFIG_COLUMNS.values(),
                *SETTING_COLUMNS.values()}
    return [column for column in table.columns
            if column not in settings and pd.api.types.is_numeric_dtype(table[column])
            and table[column].notna().any()]


def evaluated_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a runs or study table whose run has a stored evaluation (a ROC-AUC)."""
    return table.dropna(subset=[METRIC_NAMES["roc_auc"]]) if METRIC_NAMES["roc_auc"] in table else table


# --------------------------------------------------------------------------------------
# Saved study tables
# --------------------------------------------------------------------------------------


def saved_results_tables(root: Path | None = None) -> dict[str, Path]:
    """Study tables committed with the project: label (``docs/...csv``) -> path, sorted."""
    from core.paths import PROJECT_ROOT

    root = Path(root or PROJECT_ROOT / "docs")
    return {str(path.relative_to(root.parent)): path for path in sorted(root.glob("**/*.csv"))}


def read_results_table(data: bytes, name: str) -> pd.DataFrame:
    """A study table saved by ``python -m core study table NAME --csv`` (or the report's
    ``results.csv``), checked so the Compare page can draw its grid from it.

    Raises
    ------
    UNetLabError
        The file is not a CSV, lacks one of :data:`RESULTS_TABLE_COLUMNS`, or has no
        numeric metric column with a value.
    """
    try:
        table = pd.read_csv(io.BytesIO(data))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UNetLabError(f"{name}: not a readable CSV table ({error})") from None
    missing = [column for column in RESULTS_TABLE_COLUMNS if column not in table.columns]
    if missing:
        raise UNetLabError(f"{name}: not a study table; it lacks the column(s) {', '.join(missing)} "
                           "(save one with `python -m core study table NAME --csv`)")
    if not pd.api.types.is_numeric_dtype(table["Train fraction"]):
        raise UNetLabError(f"{name}: the 'Train fraction' column holds non-numbers")
    table = table.dropna(subset=["Dataset", "Train fraction", "Augmentation"]).astype({"Dataset": str})
    if not comparable_metrics(evaluated_rows(table)):
        raise UNetLabError(f"{name}: no evaluated run with a metric value (every run lacks its scores)")
    return table


# --------------------------------------------------------------------------------------
# The train-fraction x augmentation grid
# --------------------------------------------------------------------------------------


@dataclass
class GridSummary:
    """Mean, sample standard deviation and count of a metric per (augmentation, train fraction).

    Each frame has augmentation levels as rows (in :data:`AUGMENTATION_LEVELS` order) and
    train fractions as columns (ascending); cells without runs are NaN (count 0). When the
    runs hold several settings (:func:`grid_groups`), each setting has its own rows, labelled
    ``"level | setting"``, and ``settings`` lists them: settings are never averaged together.
    """

    metric: str
    mean: pd.DataFrame
    sd: pd.DataFrame
    count: pd.DataFrame
    settings: tuple[str, ...] = ()


def level_order(levels: Any) -> list[str]:
    """Augmentation levels in :data:`AUGMENTATION_LEVELS` order, unknown ones after, sorted."""
    present = set(levels)
    return [level for level in AUGMENTATION_LEVELS if level in present] + sorted(present - set(AUGMENTATION_LEVELS))


def grid_summary(table: pd.DataFrame, metric: str) -> GridSummary:
    """Aggregate ``metric`` over the seeds of each setting's (augmentation, train fraction) cell.

    Rows of ``table`` without a value of ``metric`` (not evaluated yet) are left out. The
    standard deviation is the sample one (ddof=1), NaN for a single run. Runs of different
    settings (:func:`grid_groups`: every config field but the seed, bookkeeping and the grid's
    axes) fall in different rows, never in one cell.
    """
    if metric not in table.columns:
        raise UNetLabError(f"no column {metric!r} in the runs table")
    rows = table.dropna(subset=[metric])
    groups = setting_groups(rows)
    several = len(groups) > 1
    row_labels = pd.Series("", index=rows.index, dtype=object)
    index: list[str] = []
    for label, members in groups.items():
        for level in level_order(members["Augmentation"]):
            name = f"{level} | {label}" if several else level
            row_labels[members.index[members["Augmentation"] == level]] = name
            index.append(name)
    fractions = sorted(set(rows["Train fraction"]))
    stats = rows.assign(_row=row_labels).groupby(["_row", "Train fraction"])[metric].agg(["mean", "std", "count"])

    def frame(column: str) -> pd.DataFrame:
        wide = stats[column].unstack("Train fraction") if len(stats) else pd.DataFrame()
        wide = wide.reindex(index=index, columns=fractions)
        wide.index.name = None
        return wide

    count = frame("count").fillna(0).astype(int)
    return GridSummary(metric=metric, mean=frame("mean"), sd=frame("std"), count=count,
                       settings=tuple(groups) if several else ())


# --------------------------------------------------------------------------------------
# Operating points of ROC and precision-recall curves
# --------------------------------------------------------------------------------------


def operating_point(curves: Any, threshold: float) -> dict[str, float]:
    """The curve point of the rule "probability >= threshold".

    Curve points are listed for descending thresholds and every pixel between two points'
    thresholds lies in no stored bin, so the point with the smallest stored threshold at or
    above ``threshold`` counts exactly the pixels the rule calls positive (up to the
    histogram bin that holds ``threshold``, and to downsampling on long curves). Returns
    fpr, tpr, precision, recall and the threshold of that point (``inf``: nothing positive).

    It lives with the tables (not with the figures that mark it) so that the figures
    depend on the tables and never the other way round.
    """
    thresholds = np.asarray(curves.thresholds, dtype=np.float64)
    at_or_above = np.flatnonzero(thresholds >= threshold)
    index = int(at_or_above[-1]) if at_or_above.size else 0
    return {"fpr": float(curves.fpr[index]), "tpr": float(curves.tpr[index]),
            "precision": float(curves.precision[index]), "recall": float(curves.recall[index]),
            "threshold": float(thresholds[index])}


#: What the operating-point table says where no stored threshold is at or above the chosen one.
NO_POSITIVE = "no positive prediction"


def threshold_text(threshold: float) -> str:
    """A curve point's threshold as text: ``"0.498"``, or :data:`NO_POSITIVE` for the point above
    every probability (stored as ``inf``: nothing is called positive there)."""
    return f"{threshold:.{SCORE_DECIMALS}f}" if math.isfinite(threshold) else NO_POSITIVE


def operating_points_table(curves_by_run: Mapping[str, Any], threshold: float) -> pd.DataFrame:
    """The marked operating points as a table (one row per run); the curve point's threshold is
    text (:func:`threshold_text`), so a point with no positive prediction says so."""
    rows = []
    for label, curves in curves_by_run.items():
        point = operating_point(curves, threshold)
        rows.append({"Run": label, "Curve point threshold": threshold_text(point["threshold"]),
                     "False positive rate": point["fpr"], "True positive rate (recall)": point["tpr"],
                     "Precision": point["precision"],
                     METRIC_NAMES["roc_auc"]: curves.roc_auc,
                     METRIC_NAMES["average_precision"]: curves.average_precision,
                     "Positive pixels": curves.n_positive, "Negative pixels": curves.n_negative})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Paired comparisons: each augmentation level against a reference level, seed by seed
# --------------------------------------------------------------------------------------

#: Short metric words used in comparison sentences, by headline metric key.
METRIC_WORDS: dict[str, str] = {"pixel_f1": "pixel F1", "membrane_f1": "membrane F1", "dsb_map": "DSB mAP",
                                "paper_map": "paper mAP", "ap50": "AP@0.5"}


def per_image_key(metric_key: str, method: str) -> str | None:
    """The key of a headline metric in a stored evaluation's ``per_image`` rows, if it has one."""
    return {"pixel_f1": "pixel_f1", "dsb_map": f"dsb_map[{method}]"}.get(metric_key)


def headline_metrics(table: pd.DataFrame, method: str = "components", membrane: bool = False) -> dict[str, str]:
    """The metrics compared by default: short key -> column of ``table`` (pixel F1, DSB mAP, and
    the membrane F1, i.e. the negative class's pixel F1, on membrane sets), those with a value."""
    pixel = next((c for c in table.columns if c.startswith("Pixel F1 (Dice) at threshold")), METRIC_NAMES["pixel_f1"])
    negative = next((c for c in table.columns if c.startswith("Pixel F1 of the negative class")),
                    METRIC_NAMES["pixel_f1_negative"])
    chosen = {"pixel_f1": pixel, **({"membrane_f1": negative} if membrane else {}),
              "dsb_map": instance_column("dsb_map", method)}
    return {key: column for key, column in chosen.items() if column in table.columns and table[column].notna().any()}


@dataclass
class LevelComparison:
    """One augmentation level against the reference level at one train fraction, one metric,
    in one setting of one dataset, paired by seed (runs with the same seed share the split and
    the initial weights). Differences are ``level - reference``.

    ``paired`` is the test over seeds (:func:`core.stats.paired_comparison` of the runs' scores);
    ``interval`` the two-stage bootstrap over seeds and validation images of the mean per-image
    difference (:func:`core.stats.paired_bootstrap`), None without stored per-image scores;
    ``p_holm`` the Holm-adjusted p of the paired t-test within the family it was adjusted in.
    """

    dataset: str
    setting: str
    fraction: float
    level: str
    reference: str
    metric_key: str
    metric: str
    seeds: tuple[int, ...]
    runs: tuple[tuple[str, str], ...]
    paired: Any
    interval: Any = None
    n_images: int | None = None
    p_holm: float = float("nan")
    show_setting: bool = False

    @property
    def where(self) -> str:
        return f"{self.fraction:.0%}" + (f", {self.setting}" if self.show_setting else "")

    def sentence(self) -> str:
        """E.g. ``pixel F1, isbi2012: heavy minus none at 10%: -0.031 [-0.052, -0.012] (bootstrap
        95%), p = 0.004 (paired t, Holm-adjusted), 5 seeds x 17 images``."""
        from core.stats import comparison_sentence

        p_adjusted = None if math.isnan(self.p_holm) else self.p_holm
        text = comparison_sentence(self.level, self.reference, self.where, self.paired, self.interval, p_adjusted,
                                   self.n_images)
        return f"{METRIC_WORDS.get(self.metric_key, self.metric)}, {self.dataset}: {text}"


def _one_run_per_seed(rows: pd.DataFrame) -> dict[int, Any]:
    """Seed -> the row of its run (the first, when a cell holds the same seed twice)."""
    out: dict[int, Any] = {}
    for _, row in rows.iterrows():
        out.setdefault(int(row["Seed"]), row)
    return out


def _per_image_differences(summary_a: Mapping[str, Any] | None, summary_b: Mapping[str, Any] | None,
                           key: str) -> np.ndarray | None:
    """Per-image ``a - b`` of ``key`` over the validation images both evaluations scored, matched
    by image name; None when either has no per-image rows with that key."""
    def values(summary):
        rows = (summary or {}).get("per_image") or []
        found = {row["name"]: row[key] for row in rows if key in row and row[key] is not None}
        return found or None

    a, b = values(summary_a), values(summary_b)
    if a is None or b is None:
        return None
    names = [name for name in a if name in b]
    return np.array([float(a[name]) - float(b[name]) for name in names], dtype=float)


def level_comparisons(table: pd.DataFrame, metrics: Mapping[str, str],
                      summaries: Mapping[str, Mapping[str, Any] | None] | None = None,
                      method: str = "components", reference: str = "none", n_resamples: int = 10000,
                      alpha: float = 0.05) -> list[LevelComparison]:
    """Every augmentation level against ``reference`` at each train fraction, per setting and metric.

    Parameters
    ----------
    table : runs or study table (evaluated rows are used); needs Dataset, Train fraction,
        Augmentation and Seed columns
    metrics : short key (``pixel_f1``, ``membrane_f1``, ``dsb_map``, ...) -> column of ``table``
    summaries : run id -> stored evaluation summary; their ``per_image`` rows give the
        bootstrap interval (pixel F1, DSB mAP); without them the interval is the paired t one
    method : post-processing method of the per-image DSB mAP
    reference : the level every other level is compared with

    Returns
    -------
    list of LevelComparison
        One per (dataset, setting, fraction, level, metric) with at least one seed in both
        cells, in that order, Holm-adjusted within this list (:func:`with_holm`). Runs of
        different settings (:func:`grid_groups`) are never paired.
    """
    from core.stats import paired_bootstrap, paired_comparison

    comparisons: list[LevelComparison] = []
    if table.empty or not {"Dataset", "Train fraction", "Augmentation", "Seed"} <= set(table.columns):
        return comparisons
    for dataset in dict.fromkeys(table["Dataset"]):
        of_dataset = table[table["Dataset"] == dataset]
        groups = setting_groups(of_dataset)
        for setting, rows in groups.items():
            levels = [level for level in level_order(rows["Augmentation"]) if level != reference]
            if reference not in set(rows["Augmentation"]):
                continue
            for fraction in sorted(set(float(f) for f in rows["Train fraction"])):
                at = rows[np.isclose(rows["Train fraction"].astype(float), fraction)]
                for level in levels:
                    for key, column in metrics.items():
                        if column not in at.columns:
                            continue
                        base = _one_run_per_seed(at[(at["Augmentation"] == reference) & at[column].notna()])
                        other = _one_run_per_seed(at[(at["Augmentation"] == level) & at[column].notna()])
                        seeds = tuple(sorted(set(base) & set(other)))
                        if not seeds:
                            continue
                        paired = paired_comparison([float(other[s][column]) for s in seeds],
                                                   [float(base[s][column]) for s in seeds], alpha=alpha)
                        interval, n_images = None, None
                        image_key = per_image_key(key, method)
                        if summaries is not None and image_key is not None:
                            differences = [_per_image_differences(summaries.get(other[s]["Run"]),
                                                                  summaries.get(base[s]["Run"]), image_key)
                                           for s in seeds]
                            if all(d is not None and d.size for d in differences):
                                interval = paired_bootstrap(differences, n_resamples=n_resamples)
                                counts = {d.size for d in differences}
                                n_images = counts.pop() if len(counts) == 1 else None
                        comparisons.append(LevelComparison(
                            dataset=str(dataset), setting=setting, fraction=fraction, level=level,
                            reference=reference, metric_key=key, metric=column, seeds=seeds,
                            runs=tuple((str(other[s]["Run"]), str(base[s]["Run"])) for s in seeds),
                            paired=paired, interval=interval, n_images=n_images, show_setting=len(groups) > 1))
    return with_holm(comparisons)


def with_holm(comparisons: Sequence[LevelComparison]) -> list[LevelComparison]:
    """Set each comparison's ``p_holm``: Holm-Bonferroni over the paired t p-values of all of
    them (comparisons without a test do not count in the family)."""
    from core.stats import holm

    comparisons = list(comparisons)
    adjusted = holm([c.paired.p_t for c in comparisons]) if comparisons else []
    for comparison, p in zip(comparisons, adjusted):
        comparison.p_holm = float(p)
    return comparisons


def format_interval(low: float, high: float, digits: int = 3) -> str:
    """``[-0.052, -0.012]``; ``-`` when either end is missing."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def comparisons_table(comparisons: Sequence[LevelComparison]) -> pd.DataFrame:
    """One row per comparison, every number named; p-values as numbers (NaN: no test)."""
    nan = float("nan")
    rows = []
    for c in comparisons:
        p, interval = c.paired, c.interval
        rows.append({
            "Dataset": c.dataset, SETTING_COLUMN: c.setting, "Train fraction": c.fraction,
            "Comparison": f"{c.level} − {c.reference}", "Metric": c.metric,
            "Seeds (pairs)": p.n, "Validation images per seed": nan if c.n_images is None else c.n_images,
            "Mean difference over seeds": p.difference,
            f"t {p.confidence:.0%} interval (seeds)": format_interval(p.ci_low, p.ci_high),
            "Mean per-image difference": nan if interval is None else interval.estimate,
            f"Bootstrap {p.confidence:.0%} interval (seeds x images)":
                "-" if interval is None else format_interval(interval.low, interval.high),
            "p (paired t)": nan if p.p_t is None else p.p_t,
            "p (paired t, Holm)": c.p_holm,
            "p (Wilcoxon signed-rank)": nan if p.p_wilcoxon is None else p.p_wilcoxon,
            "Effect size d_z": p.d_z,
            "Sentence": c.sentence(),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# How tables are shown: one rule for decimals, counts and cells without a value
# --------------------------------------------------------------------------------------

#: Column-name starts of counts (shown with thousands separators, no decimals).
COUNT_PREFIXES: tuple[str, ...] = ("Pixel TP", "Pixel FP", "Pixel FN", "Pixel TN", "TP objects", "FP objects",
                                   "FN objects", "Positive pixels", "Negative pixels", "Validation images",
                                   "Best epoch", "Budget", "Seeds", "Training images", "Epochs", "Steps per epoch",
                                   "Objects", "Foreground pixels", "Width", "Height", "Mean object area",
                                   "Median object area", "Smallest object", "Largest object")
#: Numeric columns that are settings, not scores: shown as they are (no forced decimals).
PLAIN_COLUMNS: tuple[str, ...] = ("Train fraction", "Seed", "Model width", "Depth", "Threshold", "Learning rate",
                                  "Weight decay", "Validation fraction", "Batch size", "Patch size", "Tile size",
                                  "Image size (0 = native)", "Early stopping patience (0 = off)",
                                  "Threads (0 = torch's default)", "Foreground share", RUN_TIME_COLUMN)


def column_kinds(table: pd.DataFrame) -> dict[str, str]:
    """Each numeric column's display kind: ``"count"`` (thousands separators), ``"score"``
    (:data:`SCORE_DECIMALS` decimals) or ``"p"`` (p-values); settings are left out."""
    kinds = {}
    for column in table.columns:
        if not pd.api.types.is_numeric_dtype(table[column]) or pd.api.types.is_bool_dtype(table[column]):
            continue
        name = str(column)
        if name in PLAIN_COLUMNS:
            continue
        if name.startswith("p ("):
            kinds[name] = "p"
        elif name.startswith(COUNT_PREFIXES):
            kinds[name] = "count"
        else:
            kinds[name] = "score"
    return kinds


def display_table(table: pd.DataFrame, missing: str = NOT_EVALUATED) -> Any:
    """``table`` as a pandas Styler for the pages: scores with :data:`SCORE_DECIMALS` decimals,
    counts with thousands separators, p-values as :func:`core.stats.format_p` writes them, and
    ``missing`` (default "not evaluated") in empty cells, e.g. the metric cells of a run without a
    stored evaluation (Streamlit would show "None").

    Columns without an empty cell stay numbers (the Styler only formats what is shown), so sorting
    them in the browser sorts numbers; a column with empty cells becomes text, since Streamlit
    draws an empty number cell as "None" whatever the Styler says.
    """
    from core.stats import format_p

    formats: dict[str, Any] = {}
    for column, kind in column_kinds(table).items():
        if kind == "count":
            formats[column] = lambda value: missing if value != value else format_count(value)
        elif kind == "p":
            formats[column] = lambda value: "-" if value is None or value != value else format_p(float(value))
        else:
            formats[column] = lambda value: missing if value != value else format_score(value)
    gaps = {column: formatter for column, formatter in formats.items() if table[column].isna().any()}
    if gaps:
        table = table.assign(**{column: table[column].map(formatter).astype(object)
                                for column, formatter in gaps.items()})
    return table.style.format({c: f for c, f in formats.items() if c not in gaps}, na_rep=missing)


# --------------------------------------------------------------------------------------
# Model pickers: each model's validation score and data
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What a model picker says of one model: its validation pixel F1, on how many images of
    which data, and the kind of images it was trained on (its dataset's positive class)."""

    key: str
    label: str
    score: float | None  # validation pixel F1 (Dice) at the model's threshold; None: not evaluated
    n_images: int | None
    data: str
    kind: str

    def picker_label(self) -> str:
        """E.g. ``"synthetic-nuclei 50% none s0, epochs 2 · pixel F1 0.812 on 5 validation images of
        synthetic-nuclei"``."""
        if self.score is None:
            return f"{self.label} · not evaluated (trained on {self.data})"
        images = f"{self.n_images:,} validation images" if self.n_images else "its validation images"
        return f"{self.label} · pixel F1 {self.score:.{SCORE_DECIMALS}f} on {images} of {self.data}"


def model_facts(choices: Sequence[Any], runs_by_id: Mapping[str, Any],
                summaries: Mapping[str, Mapping[str, Any] | None], kinds: Mapping[str, str]) -> list[ModelFacts]:
    """One :class:`ModelFacts` per model choice (``core.starter.ModelChoice``).

    Parameters
    ----------
    choices : the picker's models (shipped models have keys ``starter:<name>``)
    runs_by_id : run id -> RunRecord, for the runs among ``choices``
    summaries : run id -> stored validation evaluation (None: not evaluated)
    kinds : model key -> kind of images it segments (its data's positive class, e.g. "nucleus")
    """
    from core.starter import find_starter

    labels = run_labels([runs_by_id[c.key] for c in choices if c.key in runs_by_id])
    facts = []
    for choice in choices:
        kind = kinds.get(choice.key, choice.config.dataset)
        if choice.key.startswith("starter:"):
            model = find_starter(choice.key.split(":", 1)[1])
            scores = (model.info.get("validation") if model else None) or {}
            facts.append(ModelFacts(choice.key, choice.label, scores.get("pixel_f1"), scores.get("n_images"),
                                    choice.config.dataset, kind))
            continue
        summary = summaries.get(choice.key)
        score = summary["pixel"]["f1"] if summary else None
        run = runs_by_id.get(choice.key)
        label = labels.get(choice.key, choice.label)
        if run is not None and run.status != "finished":
            label = f"{label} ({run.status})"
        facts.append(ModelFacts(choice.key, label, score, summary.get("n_images") if summary else None,
                                choice.config.dataset if not choice.config.root
                                else f"{choice.config.dataset}: {Path(choice.config.root).name}", kind))
    return facts


def default_model(facts: Sequence[ModelFacts], kind: str | None = None) -> str | None:
    """The key of the best evaluated model for images of ``kind`` (highest validation pixel F1;
    a shipped model counts with the score of its own validation images), else the first model
    of that kind, else the first model. None when there is none."""
    of_kind = [fact for fact in facts if kind is None or fact.kind == kind] or list(facts)
    scored = [fact for fact in of_kind if fact.score is not None]
    if scored:
        return max(scored, key=lambda fact: fact.score).key
    return of_kind[0].key if of_kind else None


# --------------------------------------------------------------------------------------
# The queue's worker, as the Train page reports it
# --------------------------------------------------------------------------------------

#: Seconds after a launch (or resume) during which a missing worker counts as starting: the
#: worker is a new Python process that imports torch before it takes its lock.
WORKER_START_SECONDS = 20.0


def worker_state(queued: int, worker_running: bool, last_start: float | None, now: float) -> str:
    """``"running"``, ``"idle"`` (nothing queued), ``"starting"`` (runs queued, a worker started
    less than :data:`WORKER_START_SECONDS` ago) or ``"missing"`` (runs queued, none serves them)."""
    if worker_running:
        return "running"
    if not queued:
        return "idle"
    if last_start is not None and now - last_start < WORKER_START_SECONDS:
        return "starting"
    return "missing"


def model_kinds(choices: Sequence[Any], positive_class: Any) -> dict[str, str]:
    """Model key -> the kind of images it segments: its dataset's positive class
    (``positive_class(dataset name)``); a run fine-tuned on a folder (``init_from``) keeps the
    kind of the model it started from."""
    by_key = {choice.key: choice for choice in choices}

    def kind(choice: Any, depth: int = 0) -> str:
        config = choice.config
        source = config.init_from
        if config.dataset == "folder" and source and depth < 20:
            parent = by_key.get(source) or by_key.get(f"starter:{source}")
            if parent is not None:
                return kind(parent, depth + 1)
        return str(positive_class(config.dataset))

    return {choice.key: kind(choice) for choice in choices}
