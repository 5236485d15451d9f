"""What the Streamlit pages show, built without Streamlit: tables, plotly figures, overlays.

The pages in ``pages/`` hold layout only; every table (a pandas DataFrame), figure (a
plotly ``Figure``), overlay image (uint8 RGB) and file offered for download is built here
by a small function that the tests call directly.

Every number shown names what it is: metric columns use the exact display names of
:data:`core.metrics.METRIC_NAMES` (pixel metrics with the threshold they were computed at,
instance metrics with the post-processing method in brackets), and tables carry the counts
behind the rates and the split the numbers were computed on.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.config import AUGMENTATION_LEVELS, RunConfig
from core.errors import DatasetError, UNetLabError
from core.metrics import METRIC_NAMES, metric_name
from core.paths import cache_dir

#: Presets offered beside the train-fraction slider.
TRAIN_FRACTION_PRESETS: tuple[float, ...] = (0.1, 0.2, 0.5, 0.8)
#: Files the Segment page accepts (by name suffix).
UPLOAD_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Largest uploaded image segmented (pixels); about 8k x 8k, whose float maps take ~1 GB.
MAX_UPLOAD_PIXELS: int = 64_000_000
#: Error colours of the mask overlays (RGB).
ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "true positive": (0, 200, 0),
    "false positive": (255, 0, 255),
    "false negative": (0, 170, 255),
}


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


@dataclass
class UserDataset:
    """A dataset the user registered by giving its folder.

    ``dataset`` is the loader's name (``folder`` for images/ + masks/, or a named dataset's
    own layout); ``root`` the folder; ``label`` what the pages show.
    """

    label: str
    dataset: str
    root: str
    added: float = field(default_factory=time.time)


def user_datasets_path() -> Path:
    """The JSON file listing registered folders (beside the run registry)."""
    return cache_dir() / "user_datasets.json"


def load_user_datasets(path: Path | None = None) -> list[UserDataset]:
    """The registered folders, oldest first (an unreadable list counts as empty)."""
    path = path or user_datasets_path()
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        return [UserDataset(**entry) for entry in entries]
    except (ValueError, TypeError):
        return []


def register_user_dataset(dataset: str, root: str | Path, label: str | None = None,
                          path: Path | None = None) -> UserDataset:
    """Check that ``root`` loads as ``dataset`` and add it to the registered folders.

    Raises
    ------
    DatasetError
        The loader's own message when the folder does not load (missing folder, wrong
        layout, unreadable file, images without masks...).
    """
    from core.datasets import load_dataset

    root_path = Path(root).expanduser()
    if not str(root).strip():
        raise DatasetError("give the path of the dataset's folder")
    if not root_path.is_dir():
        raise DatasetError(f"{root_path}: no such folder on this machine")
    root_path = root_path.resolve()
    loaded = load_dataset(dataset, str(root_path), split="train")
    if len(loaded) < 2:
        raise DatasetError(f"{root_path}: {len(loaded)} labelled image(s); a training run needs at least 2 "
                           "(some for training, some for validation)")
    path = path or user_datasets_path()
    entries = [entry for entry in load_user_datasets(path)
               if not (entry.dataset == dataset and entry.root == str(root_path))]
    entry = UserDataset(label=label or f"{dataset}: {root_path.name}", dataset=dataset, root=str(root_path))
    entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps([asdict(e) for e in entries], indent=1))
    os.replace(temporary, path)
    return entry


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
# Launching runs
# --------------------------------------------------------------------------------------


def grid_configs(base: RunConfig, fractions: Iterable[float], levels: Iterable[str],
                 seeds: Iterable[int], study: str | None = None) -> list[RunConfig]:
    """One validated config per (train fraction, augmentation level, seed), in that order.

    Raises
    ------
    UNetLabError
        If a list is empty, or a value is out of range (ConfigError names it).
    """
    fractions, levels, seeds = list(fractions), list(levels), list(seeds)
    for name, values in (("train fraction", fractions), ("augmentation level", levels), ("seed", seeds)):
        if not values:
            raise UNetLabError(f"choose at least one {name} for the grid")
    configs = []
    for fraction in fractions:
        for level in levels:
            for seed in seeds:
                values = base.to_dict()
                values.update(train_fraction=float(fraction), augmentation=level, seed=int(seed),
                              study=study if study is not None else base.study)
                configs.append(RunConfig.from_dict(values).validate())
    return configs


def parse_seeds(text: str) -> list[int]:
    """``"0, 1, 2"`` or ``"0-4"`` -> list of distinct seeds in order.

    Raises
    ------
    UNetLabError
        On anything but non-negative integers and ranges.
    """
    seeds: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                low, high = (int(p) for p in part.split("-", 1))
                values = list(range(low, high + 1))
            else:
                values = [int(part)]
        except ValueError:
            raise UNetLabError(f"seeds: {part!r} is not a whole number or a range like 0-4") from None
        if any(v < 0 for v in values) or not values:
            raise UNetLabError(f"seeds: {part!r} must give non-negative whole numbers")
        seeds += [v for v in values if v not in seeds]
    if not seeds:
        raise UNetLabError("seeds: give at least one seed, e.g. 0 or 0, 1, 2")
    return seeds


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
    """``"done"``, ``"running"`` (the finished run's process is still evaluating) or ``"not done"``.

    The training process evaluates its run right after marking it finished, so a finished
    run whose process is alive is being evaluated.
    """
    from core.runs import process_alive

    if has_evaluation:
        return "done"
    if record.status == "finished" and process_alive(record.pid):
        return "running"
    return "not done"


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
        {"val": "validation part", "test": "official test split"}.get(summary["split"], summary["split"]),
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
    from core.study import EXTRA_CONFIG_COLUMNS, RUN_TIME_COLUMN

    settings = {"Train fraction", "Seed", "Epochs", "Steps per epoch", "Model width", "Depth", "Threshold",
                "Validation images", "Best epoch", RUN_TIME_COLUMN, *EXTRA_CONFIG_COLUMNS.values()}
    return [column for column in table.columns
            if column not in settings and pd.api.types.is_numeric_dtype(table[column])
            and table[column].notna().any()]


def evaluated_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a runs or study table whose run has a stored evaluation (a ROC-AUC)."""
    return table.dropna(subset=[METRIC_NAMES["roc_auc"]]) if METRIC_NAMES["roc_auc"] in table else table


#: What the negative-class F1 column means, shown as its help in tables.
NEGATIVE_CLASS_F1_HELP = ("F1 of the pixels outside the positive class: the membrane F1 on ISBI 2012/2013 "
                          "(positive = cell interior), the background F1 on nuclei and mitochondria sets")


#: Columns a saved study table needs before the Compare page can draw its grid.
RESULTS_TABLE_COLUMNS: tuple[str, ...] = ("Run", "Dataset", "Train fraction", "Augmentation", "Seed")


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


def grid_heatmap(grid: GridSummary, title: str | None = None) -> go.Figure:
    """Heatmap of the grid means; each cell reads ``mean ± sd`` and ``n = count``."""
    text = []
    for level in grid.mean.index:
        line = []
        for fraction in grid.mean.columns:
            n = int(grid.count.loc[level, fraction])
            mean, sd = grid.mean.loc[level, fraction], grid.sd.loc[level, fraction]
            if n == 0:
                line.append("no runs")
            elif n == 1 or pd.isna(sd):
                line.append(f"{mean:.3f}<br>n = {n}")
            else:
                line.append(f"{mean:.3f} ± {sd:.3f}<br>n = {n}")
        text.append(line)
    figure = go.Figure(go.Heatmap(
        z=grid.mean.to_numpy(dtype=float),
        x=[f"{fraction:.0%}" for fraction in grid.mean.columns],
        y=list(grid.mean.index),
        text=text, texttemplate="%{text}", colorscale="Viridis",
        colorbar={"title": "mean"},
        hovertemplate="augmentation %{y}, train fraction %{x}<br>%{text}<extra></extra>",
    ))
    figure.update_layout(
        title=title or f"{grid.metric}: mean ± sd over seeds",
        xaxis_title="train fraction", yaxis_title="augmentation level",
        yaxis={"type": "category"}, xaxis={"type": "category"}, height=160 + 70 * max(1, len(grid.mean.index)),
    )
    return figure


# --------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------

CURVE_PANELS: dict[str, str] = {
    "train_loss": "Training loss",
    "val_loss": "Validation loss (pixel BCE)",
    "val_f1": "Validation pixel F1 (Dice)",
}


def training_curves_figure(histories: Mapping[str, Sequence[Mapping[str, Any]]],
                           panels: Sequence[str] = ("train_loss", "val_loss", "val_f1")) -> go.Figure:
    """Per-epoch curves of several runs overlaid, one panel per metric.

    Parameters
    ----------
    histories : run label -> ``Registry.epochs(run_id)`` (epoch 0 = the untrained model,
        which has no training loss)
    panels : keys of the epoch dicts, each drawn in its own panel
    """
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[CURVE_PANELS.get(p, p) for p in panels])
    palette = _palette(len(histories))
    for colour, (label, epochs) in zip(palette, histories.items()):
        for column, key in enumerate(panels, start=1):
            points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
            if not points:
                continue
            x, y = zip(*points)
            figure.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, legendgroup=label,
                                        showlegend=column == 1, line={"color": colour}),
                             row=1, col=column)
    figure.update_xaxes(title_text="epoch (0 = untrained)", dtick=1 if _max_epoch(histories) <= 20 else None)
    figure.update_annotations(font_size=13)
    figure.update_layout(height=380, legend={"orientation": "h", "y": -0.25}, margin={"t": 40})
    return figure


def _max_epoch(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    return max((e["epoch"] for epochs in histories.values() for e in epochs), default=0)


def _palette(n: int) -> list[str]:
    import plotly.express as px

    colours = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24
    return [colours[i % len(colours)] for i in range(max(n, 1))]


# --------------------------------------------------------------------------------------
# ROC and precision-recall curves
# --------------------------------------------------------------------------------------


def curves_from_arrays(arrays: Mapping[str, np.ndarray]):
    """The stored curves of an evaluation (``curve_*`` arrays) as a PixelCurves, or None."""
    from core.metrics import PixelCurves

    stored = {key[len("curve_"):]: value for key, value in arrays.items() if key.startswith("curve_")}
    return PixelCurves.from_dict(stored) if stored else None


def operating_point(curves, threshold: float) -> dict[str, float]:
    """The curve point of the rule "probability >= threshold".

    Curve points are listed for descending thresholds and every pixel between two points'
    thresholds lies in no stored bin, so the point with the smallest stored threshold at or
    above ``threshold`` counts exactly the pixels the rule calls positive (up to the
    histogram bin that holds ``threshold``, and to downsampling on long curves). Returns
    fpr, tpr, precision, recall and the threshold of that point (``inf``: nothing positive).
    """
    thresholds = np.asarray(curves.thresholds, dtype=np.float64)
    at_or_above = np.flatnonzero(thresholds >= threshold)
    index = int(at_or_above[-1]) if at_or_above.size else 0
    return {"fpr": float(curves.fpr[index]), "tpr": float(curves.tpr[index]),
            "precision": float(curves.precision[index]), "recall": float(curves.recall[index]),
            "threshold": float(thresholds[index])}


def roc_pr_figures(curves_by_run: Mapping[str, Any], threshold: float) -> tuple[go.Figure, go.Figure]:
    """ROC and PR curves of several runs overlaid, AUC / AP in the legend, the operating
    point at ``threshold`` marked on each curve.

    Parameters
    ----------
    curves_by_run : run label -> core.metrics.PixelCurves
    threshold : probability threshold of the marked operating point
    """
    roc, pr = go.Figure(), go.Figure()
    for colour, (label, curves) in zip(_palette(len(curves_by_run)), curves_by_run.items()):
        point = operating_point(curves, threshold)
        roc.add_trace(go.Scatter(
            x=curves.fpr, y=curves.tpr, mode="lines", line={"color": colour}, legendgroup=label,
            name=f"{label} ({METRIC_NAMES['roc_auc']} = {curves.roc_auc:.4f})",
            hovertemplate="FPR %{x:.4f}, TPR %{y:.4f}<extra></extra>"))
        pr.add_trace(go.Scatter(
            x=curves.recall, y=curves.precision, mode="lines", line={"color": colour}, legendgroup=label,
            name=f"{label} ({METRIC_NAMES['average_precision']} = {curves.average_precision:.4f})",
            hovertemplate="recall %{x:.4f}, precision %{y:.4f}<extra></extra>"))
        marker = {"color": colour, "size": 11, "symbol": "circle-open", "line": {"width": 3}}
        caption = f"curve point at probability >= {point['threshold']:.3f}"
        roc.add_trace(go.Scatter(x=[point["fpr"]], y=[point["tpr"]], mode="markers", marker=marker,
                                 legendgroup=label, showlegend=False,
                                 hovertemplate=f"{label}<br>{caption}<br>FPR %{{x:.4f}}, TPR %{{y:.4f}}<extra></extra>"))
        pr.add_trace(go.Scatter(x=[point["recall"]], y=[point["precision"]], mode="markers", marker=marker,
                                legendgroup=label, showlegend=False,
                                hovertemplate=f"{label}<br>{caption}<br>recall %{{x:.4f}}, precision %{{y:.4f}}<extra></extra>"))
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="chance (ROC-AUC 0.5)"))
    roc.update_layout(title=f"ROC curves (pixels); circles: threshold {threshold:g}",
                      xaxis_title="false positive rate FP/(FP+TN)", yaxis_title="true positive rate TP/(TP+FN)",
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]}, height=480,
                      legend={"orientation": "h", "y": -0.2})
    pr.update_layout(title=f"Precision-recall curves (pixels); circles: threshold {threshold:g}",
                     xaxis_title="recall TP/(TP+FN)", yaxis_title="precision TP/(TP+FP)",
                     xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]}, height=480,
                     legend={"orientation": "h", "y": -0.2})
    return roc, pr


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


# --------------------------------------------------------------------------------------
# Images and overlays
# --------------------------------------------------------------------------------------


def display_rgb(image: np.ndarray, stretch: bool = True) -> np.ndarray:
    """An (H, W, C) or (H, W) float image in [0, 1] as uint8 RGB (H, W, 3) for display.

    ``stretch`` maps the 0.5th..99.5th percentile to the full range, so a 12-bit
    camera image stored in 16 bits (which reads as dark) is visible.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise UNetLabError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if stretch and image.size:
        low, high = np.percentile(image, [0.5, 99.5])
        if high > low:
            image = (image - low) / (high - low)
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def error_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                  opacity: float = 0.5) -> np.ndarray:
    """The image with every pixel coloured by its error class.

    True positives (truth and prediction) green, false positives (prediction only)
    magenta, false negatives (truth only) light blue (:data:`ERROR_COLOURS`); true
    negatives keep the image.

    Parameters
    ----------
    image : ndarray, (H, W, C) or (H, W), float in [0, 1], or uint8 RGB (H, W, 3)
    truth, prediction : ndarray, bool, shape (H, W)
    opacity : float in [0, 1], weight of the colour over the image

    Returns
    -------
    ndarray, uint8, shape (H, W, 3)
    """
    truth, prediction = np.asarray(truth, bool), np.asarray(prediction, bool)
    base = _base_rgb(image)
    if truth.shape != base.shape[:2] or prediction.shape != base.shape[:2]:
        raise UNetLabError(f"image {base.shape[:2]}, truth {truth.shape} and prediction {prediction.shape} "
                           "must have the same height and width")
    classes = {"true positive": truth & prediction, "false positive": prediction & ~truth,
               "false negative": truth & ~prediction}
    return _blend(base, [(classes[name], ERROR_COLOURS[name]) for name in classes], opacity)


def error_counts(truth: np.ndarray, prediction: np.ndarray) -> dict[str, int]:
    """Pixel counts of the error classes shown by :func:`error_overlay`."""
    truth, prediction = np.asarray(truth, bool), np.asarray(prediction, bool)
    return {"true positive": int((truth & prediction).sum()), "false positive": int((prediction & ~truth).sum()),
            "false negative": int((truth & ~prediction).sum()), "true negative": int((~truth & ~prediction).sum())}


def mask_overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.5,
                 colour: tuple[int, int, int] = (255, 200, 0)) -> np.ndarray:
    """The image with a mask filled in one colour (uint8 RGB)."""
    base = _base_rgb(image)
    return _blend(base, [(np.asarray(mask, bool), colour)], opacity)


def label_colours(n_labels: int, seed: int = 0) -> np.ndarray:
    """uint8 (n_labels + 1, 3) colours: row 0 (background) black, then bright random hues."""
    rng = np.random.default_rng(seed)
    hues = rng.permutation(n_labels) / max(n_labels, 1)
    import colorsys

    colours = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    table = np.zeros((n_labels + 1, 3), np.uint8)
    if n_labels:
        table[1:] = np.rint(np.array(colours) * 255).astype(np.uint8)
    return table


def label_overlay(image: np.ndarray, labels: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The image with each instance filled in its own colour and outlined in white.

    Parameters
    ----------
    labels : ndarray, integer, shape (H, W); 0 = background
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UNetLabError(f"labels must be an integer array, got {labels.dtype}")
    base = _base_rgb(image)
    if labels.shape != base.shape[:2]:
        raise UNetLabError(f"labels {labels.shape} and image {base.shape[:2]} differ in size")
    table = label_colours(int(labels.max()) if labels.size else 0)
    coloured = table[labels]
    inside = labels > 0
    out = base.astype(np.float32)
    out[inside] = (1 - opacity) * out[inside] + opacity * coloured[inside]
    out[find_boundaries(labels, mode="inner") & inside] = 255
    return np.rint(out).astype(np.uint8)


def probability_image(probability: np.ndarray) -> np.ndarray:
    """A probability map (H, W) in [0, 1] as uint8 RGB through the viridis colour map."""
    from plotly.colors import sample_colorscale

    lut = np.array([[int(c) for c in s[4:-1].split(",")]
                    for s in sample_colorscale("Viridis", np.linspace(0, 1, 256).tolist())], np.uint8)
    index = np.rint(np.clip(np.asarray(probability, np.float32), 0, 1) * 255).astype(np.intp)
    return lut[index]


def _base_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    return display_rgb(image)


def _blend(base: np.ndarray, layers: list[tuple[np.ndarray, tuple[int, int, int]]], opacity: float) -> np.ndarray:
    if not 0 <= opacity <= 1:
        raise UNetLabError(f"opacity must be in [0, 1], got {opacity}")
    out = base.astype(np.float32)
    for where, colour in layers:
        out[where] = (1 - opacity) * out[where] + opacity * np.asarray(colour, np.float32)
    return np.rint(out).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Uploads and downloads
# --------------------------------------------------------------------------------------


def read_upload(name: str, data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> np.ndarray:
    """Decode an uploaded image file into float32 (H, W, C) in [0, 1], C = 1 or 3.

    The size is checked from the file header before the pixels are decoded.

    Raises
    ------
    DatasetError
        A file type other than PNG, JPEG or TIFF; an empty, unreadable or corrupt file;
        a stack; more than ``max_pixels`` pixels.
    """
    from core.datasets import read_image

    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise DatasetError(f"{name}: file type {suffix or '(none)'} is not supported; "
                           f"upload a PNG, JPEG or TIFF image ({', '.join(UPLOAD_SUFFIXES)})")
    if not data:
        raise DatasetError(f"{name}: the file is empty")
    height, width = image_dimensions(name, data)
    if height * width > max_pixels:
        raise DatasetError(f"{name}: {width} x {height} pixels is over the limit of {max_pixels:,} pixels "
                           f"(about {int(math.sqrt(max_pixels)):,} x {int(math.sqrt(max_pixels)):,}); "
                           "crop or downscale it first")
    return read_image(bytes(data))


def image_dimensions(name: str, data: bytes) -> tuple[int, int]:
    """(height, width) from the header of a PNG / JPEG / TIFF, without decoding the pixels.

    Raises
    ------
    DatasetError
        When the header cannot be read.
    """
    try:
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, on the header, below the decoder's
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return int(height), int(width)
    except Exception as error:  # any header failure means the file is not a readable image
        detail = "" if "cannot identify image file" in str(error) else f" ({type(error).__name__}: {str(error)[:160]})"
        raise DatasetError(f"{name}: not a readable PNG, JPEG or TIFF image: the file is of another type "
                           f"or corrupt{detail}") from None


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 / uint16 / bool array (H, W) or uint8 (H, W, 3) as PNG bytes."""
    from PIL import Image

    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * np.uint8(255)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_download(mask: np.ndarray) -> bytes:
    """The binary mask as an 8-bit PNG (0 background, 255 foreground)."""
    return png_bytes(np.asarray(mask, bool))


def labels_download(labels: np.ndarray) -> tuple[bytes, str, str]:
    """An instance label image as a file: (bytes, suffix, MIME type).

    16-bit PNG while the ids fit (up to 65,535 objects), else a 32-bit TIFF, so the
    ids survive exactly.
    """
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise UNetLabError("label ids must be non-negative")
    if not labels.size or labels.max() <= 65535:
        return png_bytes(labels.astype(np.uint16)), ".png", "image/png"
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, labels.astype(np.uint32))
    return buffer.getvalue(), ".tif", "image/tiff"


# --------------------------------------------------------------------------------------
# Segmenting with a trained run
# --------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A run's model ready for prediction."""

    model: Any
    config: RunConfig
    channels: int
    epoch: int
    device: Any
    precision: str


def load_run_model(checkpoint: str | Path, device: str = "auto") -> LoadedModel:
    """Rebuild a run's model from a checkpoint on the best available device.

    Raises
    ------
    CheckpointError
        When the file is missing, unsafe or not a U-Net Lab checkpoint.
    """
    from core.checkpoints import build_model_from_checkpoint
    from core.train import resolve_device, resolve_precision

    resolved = resolve_device(device)
    model, config, payload = build_model_from_checkpoint(checkpoint, resolved)
    return LoadedModel(model=model, config=config, channels=int(payload.get("in_channels", 1)),
                       epoch=int(payload.get("epoch", 0)), device=resolved,
                       precision=resolve_precision(config.precision, resolved))


@dataclass
class Prediction:
    """A probability map and how long it took."""

    probability: np.ndarray  # float32 (H, W)
    seconds: float
    tiles: int


def predict_image(loaded: LoadedModel, image: np.ndarray, tile_size: int | None = None,
                  flip_tta: bool = False) -> Prediction:
    """Tiled prediction of one (H, W, C) float image with a loaded run model."""
    from core.predict import TileSettings, iter_tiles, match_channels, predict_probabilities

    tile = int(tile_size or loaded.config.tile_size)
    settings = TileSettings(tile_size=tile, overlap=min(64, tile // 4), flip_tta=flip_tta)
    image = match_channels(image, loaded.channels, source="the uploaded image")
    started = time.perf_counter()
    probability = predict_probabilities(loaded.model, image, settings, loaded.device, loaded.precision,
                                        channels_last=loaded.config.channels_last and loaded.device.type == "cpu")
    seconds = time.perf_counter() - started
    return Prediction(probability=probability, seconds=seconds,
                      tiles=len(list(iter_tiles(image.shape[0], image.shape[1], settings))))


def postprocess_parameters(method: str) -> list[dict[str, Any]]:
    """The tunable parameters of a post-processing method (name, type, default), threshold excluded."""
    from dataclasses import fields

    from core.postprocess import PARAMETERS

    if method not in PARAMETERS:
        raise UNetLabError(f"unknown post-processing method {method!r}; choose one of {', '.join(PARAMETERS)}")
    out = []
    for item in fields(PARAMETERS[method]):
        if item.name in ("threshold", "random_state"):
            continue
        out.append({"name": item.name, "type": type(item.default).__name__, "default": item.default})
    return out
