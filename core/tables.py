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

if TYPE_CHECKING:
    from core.user_datasets import UserDataset

#: Column titles of the config fields that :func:`runs_table` does not show; the study
#: table (:func:`core.study.study_table`) adds them.
EXTRA_CONFIG_COLUMNS: dict[str, str] = {
    "image_size": "Image size (0 = native)",
    "validation_fraction": "Validation fraction",
    "batch_size": "Batch size",
    "patch_size": "Patch size",
    "optimizer": "Optimizer",
    "learning_rate": "Learning rate",
    "lr_schedule": "LR schedule",
    "weight_decay": "Weight decay",
    "device": "Device",
    "precision": "Precision",
    "channels_last": "Channels last",
    "threads": "Threads (0 = torch's default)",
    "tile_size": "Tile size",
    "notes": "Notes",
}
#: The study table's column of each run's duration.
RUN_TIME_COLUMN = "Run time (s, training + evaluation)"
#: What the negative-class F1 column means, shown as its help in tables.
NEGATIVE_CLASS_F1_HELP = ("F1 of the pixels outside the positive class: the membrane F1 on ISBI 2012/2013 "
                          "(positive = cell interior), the background F1 on nuclei and mitochondria sets")
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


def instance_column(key: str, method: str) -> str:
    """Column name of an instance metric for one post-processing method."""
    return f"{METRIC_NAMES[key]} [{method}]"


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


def run_labels(records: Sequence[Any]) -> dict[str, str]:
    """Run id -> a short label: its settings and the last 6 characters of its id."""
    return {record.id: f"{record.config.label()} ({record.id[-6:]})" for record in records}


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
    for record in records:
        config: RunConfig = record.config
        row: dict[str, Any] = {
            "Run": record.id,
            "Dataset": config.dataset,
            "Folder": config.root or "",
            "Study": record.study or "",
            "Status": record.status,
            "Train fraction": config.train_fraction,
            "Augmentation": config.augmentation,
            "Seed": config.seed,
            "Epochs": config.epochs,
            "Steps per epoch": config.steps_per_epoch,
            "Model width": config.base_width,
            "Depth": config.depth,
            "Loss": config.loss,
            "Threshold": config.threshold,
            "Created": format_time(record.created),
        }
        summary = evaluations.get(record.id)
        row.update(_evaluation_columns(summary, method, threshold))
        rows.append(row)
    # What a comparison reads first (the varied settings and the scores), then the rest.
    columns = ["Run", "Dataset", "Status", "Train fraction", "Augmentation", "Seed",
               *_evaluation_columns(None, method, threshold).keys(),
               "Epochs", "Steps per epoch", "Model width", "Depth", "Loss", "Threshold", "Study", "Folder", "Created"]
    return pd.DataFrame(rows, columns=columns)


def split_label(summary: Mapping[str, Any]) -> str:
    """Which images an evaluation scored, in a few words: the official test split, or the
    validation part and how it was cut (random, a contiguous block with a gap, whole groups)."""
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


def comparable_metrics(table: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a :func:`runs_table` that have at least one value."""
    settings = {"Train fraction", "Seed", "Epochs", "Steps per epoch", "Model width", "Depth", "Threshold",
                "Validation images", "Best epoch", RUN_TIME_COLUMN, *EXTRA_CONFIG_COLUMNS.values()}
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
    train fractions as columns (ascending); cells without runs are NaN (count 0).
    """

    metric: str
    mean: pd.DataFrame
    sd: pd.DataFrame
    count: pd.DataFrame


def grid_summary(table: pd.DataFrame, metric: str) -> GridSummary:
    """Aggregate ``metric`` over seeds for each (augmentation, train fraction) cell.

    Rows of ``table`` without a value of ``metric`` (not evaluated yet) are left out. The
    standard deviation is the sample one (ddof=1), NaN for a single run.
    """
    if metric not in table.columns:
        raise UNetLabError(f"no column {metric!r} in the runs table")
    rows = table.dropna(subset=[metric])
    grouped = rows.groupby(["Augmentation", "Train fraction"])[metric]
    stats = grouped.agg(["mean", "std", "count"])
    levels = [level for level in AUGMENTATION_LEVELS if level in set(rows["Augmentation"])]
    levels += sorted(set(rows["Augmentation"]) - set(levels))
    fractions = sorted(set(rows["Train fraction"]))

    def frame(column: str) -> pd.DataFrame:
        wide = stats[column].unstack("Train fraction") if len(stats) else pd.DataFrame()
        return wide.reindex(index=levels, columns=fractions)

    count = frame("count").fillna(0).astype(int)
    return GridSummary(metric=metric, mean=frame("mean"), sd=frame("std"), count=count)


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


def operating_points_table(curves_by_run: Mapping[str, Any], threshold: float) -> pd.DataFrame:
    """The marked operating points as a table (one row per run)."""
    rows = []
    for label, curves in curves_by_run.items():
        point = operating_point(curves, threshold)
        rows.append({"Run": label, "Curve point threshold": point["threshold"],
                     "False positive rate": point["fpr"], "True positive rate (recall)": point["tpr"],
                     "Precision": point["precision"],
                     METRIC_NAMES["roc_auc"]: curves.roc_auc,
                     METRIC_NAMES["average_precision"]: curves.average_precision,
                     "Positive pixels": curves.n_positive, "Negative pixels": curves.n_negative})
    return pd.DataFrame(rows)
