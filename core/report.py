"""The report of a study: a self-contained HTML page and a Markdown summary.

``build_report(name, out_dir)`` writes into ``out_dir``:

- ``report.html``: every table and plotly figure (plotly.js inlined once, so the page
  opens offline) and the image strips embedded as base64 PNGs;
- ``summary.md``: the same tables as Markdown, linking the strips;
- ``strip_<dataset>.png``: the same validation image across the grid, errors coloured.

Sections: the machine, wall time and exact commands; a table in the form of the paper's
Table 1 (datasets as columns, mAP and F1 as rows) for one train fraction and level, with
the paper's figures (:data:`PAPER_TABLE1`) beside ours; per dataset and per *setting*
(runs differing in anything but the seed and bookkeeping are never pooled, see
:func:`core.tables.setting_key`), the fraction x level grid of mean ± sd over seeds for
pixel F1, DSB mAP and AP@0.5 with the best cell marked and the cells not distinguishable
from it; paired comparisons of each level against none; learning curves; metric-versus-
fraction lines; ROC/PR overlays; and one row per run with its numbers.

Statistics (:mod:`core.stats`): runs with the same seed share the split and the initial
weights, so two cells are compared *paired* by seed. Each level against none: the paired
t-test over seeds (Wilcoxon signed-rank where enough seeds), a 95% two-stage bootstrap
interval over seeds and validation images of the mean per-image difference, Holm-Bonferroni
adjusted p-values over every comparison in the report, the effect size d_z, and one plain
sentence each. The grid's "≈" marks use the paired t-test over the seeds both cells share
(Welch's t-test only when they share fewer than two).
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from core.config import AUGMENTATION_LEVELS
from core.errors import UNetLabError
from core.stats import NOISE_ALPHA, CellStats, NoiseVerdict, format_cell, paired_comparison, within_seed_noise
from core.tables import RUN_TIME_COLUMN, SETTING_COLUMN, STOPPED_COLUMN, TRAINING_IMAGES_COLUMN

if TYPE_CHECKING:
    from core.runs import Registry

#: The paper's Table 1, its five datasets: its name for the set, its mAP (eq. (4)-(5): TP/(TP+FP)
#: at IoU >= r, mean over r = 0.50..1.00) and F1, and how it trained (epochs, image size, images).
#: Copied from the paper's Table 1 (the project's ../shared/paper/table1.csv); kept here because a
#: clone of this repository has no ../shared, so the report never reads that file.
PAPER_TABLE1: dict[str, dict[str, Any]] = {
    "dsb2018": {"name": "Kaggle", "mAP": 0.47, "F1": 0.89, "epochs": 100, "image_size": "128x128", "n_images": 670},
    "isbi2012": {"name": "ISBI 2012", "mAP": 0.53, "F1": 0.93, "epochs": 100, "image_size": "512x512",
                 "n_images": 30},
    "isbi2013": {"name": "ISBI 2013", "mAP": 0.42, "F1": 0.97, "epochs": 20, "image_size": "512x512 (from 1024x1024)",
                 "n_images": 100},
    "ncmir": {"name": "NCMIR", "mAP": 0.23, "F1": 0.63, "epochs": 200, "image_size": "512x512 (from 1024x1024)",
              "n_images": 30},
    "epfl": {"name": "EPFL", "mAP": 0.57, "F1": 0.95, "epochs": 100, "image_size": "512x512 (from 768x1024)",
             "n_images": 165},
}
#: A claim of the paper's text, quoted beside Table 1.
PAPER_CLAIM = "F1 0.96 after training on 10% of the images"
#: Printed for a dataset the paper did not use.
NOT_AVAILABLE = "n/a (not in the paper)"


@dataclass
class ReportFiles:
    """Paths of what :func:`build_report` wrote."""

    html: Path
    markdown: Path
    table: Path
    images: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Cells, noise and the grid
# --------------------------------------------------------------------------------------


def cell_text(rows: Any, column: str) -> str:
    """``format_cell`` of ``column`` over ``rows``; "not evaluated" when there are runs but no value
    (a run still training, or an evaluation stored before the metric existed)."""
    if rows.empty:
        return format_cell(None)
    values = rows[column].dropna() if column in rows else []
    return format_cell(CellStats(tuple(float(v) for v in values))) if len(values) else "not evaluated"


@dataclass
class GridTable:
    """One metric on one dataset in one setting: cells keyed by (augmentation level, train fraction).

    ``tests`` names the test behind each verdict: ``"paired t"`` (over the seeds both cells
    share) or ``"Welch"`` (the cells share fewer than two seeds).
    """

    dataset: str
    metric: str
    levels: list[str]
    fractions: list[float]
    cells: dict[tuple[str, float], CellStats]
    best: tuple[str, float] | None
    verdicts: dict[tuple[str, float], NoiseVerdict]
    setting: str = ""
    tests: dict[tuple[str, float], str] = field(default_factory=dict)


def noise_verdict(best: Mapping[int, float], other: Mapping[int, float]) -> tuple[NoiseVerdict, str]:
    """Is ``other`` within seed noise of ``best`` (seed -> value each)? Paired t-test over the
    seeds both share when they share two or more; else Welch's t-test of all their values."""
    shared = sorted(set(best) & set(other))
    if len(shared) >= 2:
        comparison = paired_comparison([best[s] for s in shared], [other[s] for s in shared], alpha=NOISE_ALPHA)
        if comparison.p_t is not None:
            return NoiseVerdict(comparison.p_t >= NOISE_ALPHA, comparison.p_t, comparison.difference), "paired t"
    return within_seed_noise(list(best.values()), list(other.values())), "Welch"


def grid_table(table: Any, dataset: str, metric: str, setting: str | None = None) -> GridTable:
    """Per-seed values of ``metric`` for every (level, fraction) cell of ``dataset`` in one setting,
    the best cell (highest mean) and each other cell's seed-noise verdict against it.

    ``setting``: a label of :func:`core.tables.setting_groups`; None when the dataset's runs hold
    a single setting (several raise UNetLabError: their runs are never pooled).
    """
    from core.tables import grid_summary, setting_groups

    rows = table[(table["Dataset"] == dataset)].dropna(subset=[metric])
    if rows.empty:
        return GridTable(dataset, metric, [], [], {}, None, {}, setting or "")
    groups = setting_groups(rows)
    if setting is None:
        if len(groups) > 1:
            raise UNetLabError(f"{dataset}: the runs hold {len(groups)} settings ({'; '.join(groups)}); "
                               "choose one, their runs are never pooled")
        setting = next(iter(groups))
    # A table without a Setting column names settings by what varies in the rows given, so the
    # rows of one setting, alone, may carry a shorter label: they are still that one setting.
    rows = groups.get(setting, next(iter(groups.values())) if len(groups) == 1 else rows.iloc[0:0])
    if rows.empty:
        return GridTable(dataset, metric, [], [], {}, None, {}, setting)
    summary = grid_summary(rows, metric)
    levels, fractions = list(summary.mean.index), [float(f) for f in summary.mean.columns]
    cells, by_seed = {}, {}
    for (level, fraction), group in rows.groupby(["Augmentation", "Train fraction"]):
        key = (level, float(fraction))
        cells[key] = CellStats(tuple(float(v) for v in group[metric]))
        if "Seed" in group:
            by_seed[key] = {}
            for seed, value in zip(group["Seed"], group[metric]):
                by_seed[key].setdefault(int(seed), float(value))
        else:  # no seeds to pair: Welch over the values
            by_seed[key] = {-1 - i: float(v) for i, v in enumerate(group[metric])}
    best = max(cells, key=lambda key: cells[key].mean)
    verdicts, tests = {}, {}
    for key in cells:
        if key != best:
            verdicts[key], tests[key] = noise_verdict(by_seed[best], by_seed[key])
    return GridTable(dataset, metric, levels, fractions, cells, best, verdicts, setting, tests)


def grid_rows(grid: GridTable) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows (levels) and notes of a grid as text; ``**bold**`` marks the best cell,
    ``≈`` the cells within seed noise of it."""
    header = ["augmentation \\ train fraction", *(f"{fraction:.0%}" for fraction in grid.fractions)]
    rows = []
    for level in grid.levels:
        line = [level]
        for fraction in grid.fractions:
            key = (level, fraction)
            text = format_cell(grid.cells.get(key))
            if key == grid.best:
                text = f"**{text} best**"
            elif key in grid.verdicts and grid.verdicts[key].within:
                text = f"{text} ≈"
            line.append(text)
        rows.append(line)
    notes = []
    if grid.best is not None:
        level, fraction = grid.best

        def test(key: tuple[str, float]) -> str:
            return grid.tests.get(key, "Welch")

        near = [f"{lv} {fr:.0%} (p = {v.p_value:.2f}, {test((lv, fr))})" for (lv, fr), v in grid.verdicts.items()
                if v.within]
        apart = [f"{lv} {fr:.0%} ({test((lv, fr))})" for (lv, fr), v in grid.verdicts.items() if v.within is False]
        unknown = [f"{lv} {fr:.0%}" for (lv, fr), v in grid.verdicts.items() if v.within is None]
        ties = [f"{lv} {fr:.0%}" for (lv, fr), v in grid.verdicts.items() if v.difference == 0]
        note = f"Best: {level} at {fraction:.0%} (highest mean)."
        if near:
            note += (f" Not distinguishable from it with these seeds (≈, p ≥ {NOISE_ALPHA}: paired t-test over the "
                     f"seeds both cells share, Welch's t-test where they share fewer than 2; not Holm-adjusted; "
                     f"not the same as equal): {', '.join(near)}.")
        if apart:
            note += f" Worse beyond seed noise (p < {NOISE_ALPHA}, not Holm-adjusted): {', '.join(apart)}."
        if unknown and grid.cells[grid.best].n < 2:
            note += " No seed-noise estimate: the best cell has fewer than 2 seeds."
        elif unknown:
            note += f" No seed-noise estimate (fewer than 2 seeds in the cell): {', '.join(unknown)}."
        if ties:
            note += f" Same mean as the best: {', '.join(ties)}."
        notes.append(note)
    return header, rows, notes


def comparison_rows(comparisons: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """The paired comparisons as text: header and rows (numbers rounded, n shown)."""
    header = ["comparison", "train fraction", "metric", "mean difference over seeds (t 95%)",
              "mean per-image difference (bootstrap 95%)", "p paired t", "p Holm", "p Wilcoxon", "d_z", "n"]
    rows = []
    for c in comparisons:
        p = c.paired
        from core.tables import format_interval

        seeds_text = f"{p.difference:+.4f} {format_interval(p.ci_low, p.ci_high)}" if math.isfinite(p.difference) else "-"
        boot = (f"{c.interval.estimate:+.4f} {format_interval(c.interval.low, c.interval.high)}"
                if c.interval is not None and math.isfinite(c.interval.estimate) else "-")
        n = f"{p.n} seed{'s' if p.n != 1 else ''}" + (f" x {c.n_images} images" if c.n_images else "")
        rows.append([f"{c.level} − {c.reference}", f"{c.fraction:.0%}", c.metric, seeds_text, boot,
                     _p_text(p.p_t), _p_text(c.p_holm), _p_text(p.p_wilcoxon),
                     "-" if not math.isfinite(p.d_z) else f"{p.d_z:+.2f}", n])
    return header, rows


def _p_text(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "< 0.001" if p < 0.001 else (f"{p:.3f}" if p < 0.1 else f"{p:.2f}")


# --------------------------------------------------------------------------------------
# Tables as Markdown and HTML
# --------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table ('|' inside cells escaped)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; ``**text**`` in a cell becomes bold."""
    def cell(value: Any) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(str(value)))

    head = "".join(f"<th>{cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def number(value: Any, digits: int = 4) -> str:
    """A metric value as text: 4 decimals, ``-`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def metric_columns(table: Any, method: str) -> dict[str, str]:
    """The report's metrics: short key -> exact column name in the study table."""
    from core.metrics import METRIC_NAMES
    from core.tables import instance_column

    pixel_f1 = next(column for column in table.columns if column.startswith("Pixel F1 (Dice) at threshold"))
    membrane_f1 = next((column for column in table.columns if column.startswith("Pixel F1 of the negative class")),
                       METRIC_NAMES["pixel_f1_negative"])
    return {"pixel_f1": pixel_f1, "membrane_f1": membrane_f1, "dsb_map": instance_column("dsb_map", method),
            "ap50": instance_column("ap50", method), "paper_map": instance_column("paper_map", method),
            "roc_auc": METRIC_NAMES["roc_auc"], "average_precision": METRIC_NAMES["average_precision"]}


def main_setting(rows: Any) -> tuple[str, Any]:
    """The setting with the most runs among ``rows`` (one dataset) and its rows; ("", rows) when empty."""
    from core.tables import setting_groups

    groups = setting_groups(rows)
    return next(iter(groups.items())) if groups else ("", rows)


def table1(table: Any, datasets: Sequence[str], fraction: float, level: str, method: str
           ) -> tuple[list[str], list[list[str]], list[str]]:
    """The paper's Table 1 form: datasets as columns; our mAP and F1 beside the paper's.

    Each dataset's cells are the runs of one setting at ``fraction`` and ``level``: the setting
    with the most runs there (named in the first row); other settings are never pooled with it.
    """
    columns = metric_columns(table, method)
    at = table[(np.isclose(table["Train fraction"], fraction)) & (table["Augmentation"] == level)]
    chosen = {d: main_setting(at[at["Dataset"] == d]) for d in datasets}

    def ours(dataset: str, key: str) -> str:
        return cell_text(chosen[dataset][1], columns[key])

    def paper(dataset: str, key: str) -> str:
        value = PAPER_TABLE1.get(dataset, {}).get(key)
        return NOT_AVAILABLE if value is None else f"{value:.2f}"

    def paper_training(dataset: str) -> str:
        row = PAPER_TABLE1.get(dataset)
        if row is None:
            return NOT_AVAILABLE
        return f"{row['name']}: {row['epochs']} epochs, {row['image_size']}, {row['n_images']} images"

    header = ["metric", *datasets]
    rows = [
        ["our setting (runs at this fraction and level)", *(chosen[d][0] or "no runs" for d in datasets)],
        [f"mAP (ours): {columns['paper_map']}", *(ours(d, "paper_map") for d in datasets)],
        ["mAP (the paper's Table 1, eq. (4)-(5))", *(paper(d, "mAP") for d in datasets)],
        [f"F1 (ours): {columns['pixel_f1']}", *(ours(d, "pixel_f1") for d in datasets)],
        ["F1 (the paper's Table 1)", *(paper(d, "F1") for d in datasets)],
        [f"also ours: {columns['dsb_map']}", *(ours(d, "dsb_map") for d in datasets)],
    ]
    membrane_sets = [d for d in datasets if is_membrane_dataset(d)]
    if membrane_sets:
        rows.append([f"also ours, EM membrane sets: {columns['membrane_f1']} (membrane F1)",
                     *(ours(d, "membrane_f1") if d in membrane_sets else "-" for d in datasets)])
    rows.append(["the paper's training (its Table 1)", *(paper_training(d) for d in datasets)])
    notes = [
        f"Train fraction {fraction:.0%}, augmentation {level}; cells are mean ± sd over seeds (n runs) of one "
        "setting. Both mAPs are the paper's eq. (4)-(5): per image the mean over r = 0.50, 0.55, ..., 1.00 of "
        "TP/(TP+FP) with a match at IoU >= r (not the Kaggle DSB score, IoU > t over 0.50..0.95 of "
        "TP/(TP+FP+FN), which is the 'also ours' row). We read the paper's F1 as the pixel F1 (Dice) at "
        "threshold 0.5.",
        f"The paper's figures are from its Table 1 (trained on all its images: see its training row); it also "
        f"claims \"{PAPER_CLAIM}\".",
    ]
    gaps = []
    for d in datasets:
        rows_of = chosen[d][1]
        if d in PAPER_TABLE1 and not rows_of.empty and rows_of[columns["pixel_f1"]].notna().any():
            f1 = rows_of[columns["pixel_f1"]].mean()
            text = f"{d} F1 {f1 - PAPER_TABLE1[d]['F1']:+.3f}"
            if columns["paper_map"] in rows_of and rows_of[columns["paper_map"]].notna().any():
                text += f", mAP {rows_of[columns['paper_map']].mean() - PAPER_TABLE1[d]['mAP']:+.3f}"
            gaps.append(text)
    if gaps:
        notes.append("Ours minus the paper's (means; the paper trained longer, on all its images): "
                     + "; ".join(gaps) + ".")
    elif not any(not chosen[d][1].empty for d in datasets):
        notes.append("No evaluated run at this fraction and level.")
    if membrane_sets:
        notes.append(f"On {', '.join(membrane_sets)} the positive class is the cell interior (most of each image), "
                     "so the pixel F1 above is high even for a poor membrane map; the membrane F1 row scores the "
                     "thin membranes themselves and is the stricter figure.")
    return header, rows, notes


def paper_comparison(table: Any, dataset: str, method: str = "components") -> Any:
    """The paper's Table 1 row of ``dataset`` beside ours, one row per (fraction, level) cell of
    the runs given (one setting: the Compare page's selection), for the Compare page.

    Returns a DataFrame (empty when the paper did not use ``dataset``).
    """
    import pandas as pd

    paper = PAPER_TABLE1.get(dataset)
    if paper is None or table.empty:
        return pd.DataFrame()
    columns = metric_columns(table, method)
    rows = []
    for (fraction, level), cell in table.groupby(["Train fraction", "Augmentation"], sort=True):
        rows.append({"Train fraction": float(fraction), "Augmentation": level,
                     "mAP (ours, eq. (4)-(5))": cell_text(cell, columns["paper_map"]),
                     "mAP (paper's Table 1)": paper["mAP"],
                     "F1 (ours, pixel F1 at 0.5)": cell_text(cell, columns["pixel_f1"]),
                     "F1 (paper's Table 1)": paper["F1"],
                     "Paper's training": f"{paper['epochs']} epochs, {paper['image_size']}, {paper['n_images']} images"})
    return pd.DataFrame(rows)


def is_membrane_dataset(name: str) -> bool:
    """True for datasets whose positive class is a dense cell interior bounded by membranes."""
    from core.datasets import get_spec
    from core.errors import DatasetError

    try:
        return get_spec(name).kind == "membrane"
    except DatasetError:  # a study may name a dataset this version no longer knows
        return False


def methods_table(tables: Mapping[str, Any], datasets: Sequence[str], fraction: float, level: str
                  ) -> tuple[list[str], list[list[str]]]:
    """Instance scores of every post-processing method at one setting: rows method x metric,
    datasets as columns (``tables``: method -> the study table built for that method)."""
    header = ["post-processing", "metric", *datasets]
    rows = []
    for method, table in tables.items():
        chosen = table[(np.isclose(table["Train fraction"], fraction)) & (table["Augmentation"] == level)]
        columns = metric_columns(table, method)
        for key in ("paper_map", "dsb_map", "ap50"):
            cells = [cell_text(main_setting(chosen[chosen["Dataset"] == d])[1], columns[key]) for d in datasets]
            rows.append([method, columns[key].removesuffix(f" [{method}]"), *cells])
    return header, rows


def fraction_lines_figure(table: Any, dataset: str, metrics: Mapping[str, str]):
    """Metric versus train fraction, one line per augmentation level, error bars = sd over seeds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from core.figures import palette
    from core.tables import grid_summary

    rows = table[table["Dataset"] == dataset]  # one setting, or grid_summary keeps settings apart
    figure = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics.values()))
    levels = [level for level in dict.fromkeys(rows["Augmentation"])]
    colours = dict(zip(levels, palette(len(levels))))
    for column, metric in enumerate(metrics.values(), start=1):
        if rows[metric].notna().sum() == 0:
            continue
        summary = grid_summary(rows, metric)
        for level in summary.mean.index:
            means, sds = summary.mean.loc[level], summary.sd.loc[level].fillna(0.0)
            present = summary.count.loc[level] > 0
            figure.add_trace(go.Scatter(
                x=[float(f) for f in means.index[present]], y=means[present].to_numpy(float),
                error_y={"type": "data", "array": sds[present].to_numpy(float), "visible": True},
                mode="lines+markers", name=level, legendgroup=level, showlegend=column == 1,
                line={"color": colours.get(level)},
                hovertemplate=f"{level}, train fraction %{{x:.0%}}<br>mean %{{y:.4f}}<extra></extra>"),
                row=1, col=column)
    figure.update_xaxes(title_text="train fraction", tickformat=".0%")
    figure.update_annotations(font_size=11)
    figure.update_layout(title=f"{dataset}: metric versus train fraction (error bars: sd over seeds)",
                         height=420, legend={"title": "augmentation"})
    return figure


def representative_runs(table: Any, dataset: str) -> dict[tuple[str, float], str]:
    """One evaluated run per (level, fraction) cell of a dataset: the one with the lowest seed.

    Runs of one seed share the validation part, so their stored maps show the same images.
    """
    from core.metrics import METRIC_NAMES

    rows = table[(table["Dataset"] == dataset) & table[METRIC_NAMES["roc_auc"]].notna()]
    if rows.empty:
        return {}
    seed = int(rows["Seed"].min())
    rows = rows[rows["Seed"] == seed]
    return {(level, float(fraction)): group["Run"].iloc[0]
            for (level, fraction), group in rows.groupby(["Augmentation", "Train fraction"])}


def image_strip(cells: Mapping[tuple[str, float], str], registry: Registry, tile: int = 200) -> tuple[np.ndarray, str] | None:
    """The same validation image for every cell, errors coloured; rows = levels, columns =
    the image with its truth, then the fractions.

    Returns (uint8 RGB image, caption) or None when no stored map is found.
    """
    from PIL import Image, ImageDraw

    from core.datasets import load_dataset
    from core.overlays import ERROR_COLOURS, error_overlay, mask_overlay

    if not cells:
        return None
    maps: dict[tuple[str, float], tuple[np.ndarray, float]] = {}
    index, config = None, None
    for key, run_id in cells.items():
        arrays = registry.evaluation_arrays(run_id, "val")
        if "index_0" not in arrays:
            continue
        if index is None:
            index, config = int(arrays["index_0"]), registry.get_run(run_id).config
        position = next((k for k in range(len(arrays)) if f"index_{k}" in arrays and int(arrays[f"index_{k}"]) == index),
                        None)
        if position is not None:
            maps[key] = (arrays[f"probability_{position}"].astype(np.float32), registry.get_run(run_id).config.threshold)
    if not maps:
        return None
    sample = load_dataset(config.dataset, config.root, split="train", size=config.image_size)[index]
    levels = list(dict.fromkeys(level for level, _ in sorted(cells, key=lambda k: k[1])))
    levels = [level for level in AUGMENTATION_LEVELS if level in levels] + \
             [level for level in levels if level not in AUGMENTATION_LEVELS]
    fractions = sorted({fraction for _, fraction in cells})
    band = 16

    def labelled(rgb: np.ndarray, text: str) -> Image.Image:
        picture = Image.new("RGB", (tile, tile + band), "white")
        picture.paste(Image.fromarray(rgb).resize((tile, tile), Image.BILINEAR), (0, band))
        draw = ImageDraw.Draw(picture)
        # Long names (DSB ids are 64 hex digits) keep their end, which holds the label's meaning.
        while draw.textlength(text) > tile - 6 and len(text) > 4:
            text = "..." + text[4:]
        draw.text((3, 2), text, fill="black")
        return picture

    truth_tile = labelled(mask_overlay(sample.image, sample.mask, 0.35), f"{sample.name}: truth")
    strip = Image.new("RGB", ((len(fractions) + 1) * tile, len(levels) * (tile + band)), "white")
    for row, level in enumerate(levels):
        strip.paste(truth_tile, (0, row * (tile + band)))
        for column, fraction in enumerate(fractions, start=1):
            if (level, fraction) not in maps:
                continue
            probability, threshold = maps[(level, fraction)]
            rgb = error_overlay(sample.image, sample.mask, probability >= threshold)
            strip.paste(labelled(rgb, f"{level}, {fraction:.0%}"), (column * tile, row * (tile + band)))
    colours = ", ".join(f"{name} {'rgb' + str(colour)}" for name, colour in ERROR_COLOURS.items())
    caption = (f"Validation image {sample.name} (dataset index {index}) across the grid (seed {config.seed} runs): "
               f"rows are augmentation levels, columns the truth then the train fractions; pixel errors at each "
               f"run's threshold coloured ({colours}).")
    return np.asarray(strip), caption


def study_times(records: Sequence[Any], evaluations: Mapping[str, Any]) -> dict[str, Any]:
    """Sum of run times, and first start to last finish, from the registry's stored timestamps.

    Each run counts from its last (re)start to the end of its evaluation (training's end when
    it has none yet), as :func:`core.study.run_seconds` does.
    """
    from core.study import run_seconds

    durations, starts, ends = [], [], []
    for record in records:
        if record.started is None:
            continue
        seconds = run_seconds(record, evaluations.get(record.id))
        starts.append(record.started)
        if seconds is not None:
            durations.append(seconds)
            ends.append(record.started + seconds)
        elif record.finished is not None:
            ends.append(record.finished)
    return {"sum_seconds": float(sum(durations)) if durations else float("nan"),
            "span_seconds": (max(ends) - min(starts)) if starts and ends else float("nan"),
            "first_start": min(starts) if starts else None, "last_finish": max(ends) if ends else None,
            "n_timed": len(durations)}


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f0f0f0}code,pre{background:#f6f6f6;padding:2px 4px}
pre{white-space:pre-wrap}img{max-width:100%}.note{color:#555;font-size:13px}"""


@dataclass
class Document:
    """The report as it is written: Markdown lines and HTML fragments, kept in step."""

    markdown: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    figures: int = 0

    def heading(self, title: str, level: int = 2) -> None:
        self.markdown.extend([f"{'#' * level} {title}", ""])
        self.body.append(f"<h{level}>{html.escape(title)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.markdown.extend([text, ""])
        self.body.append(f"<p class='note'>{html.escape(text)}</p>")

    def bullets(self, items: Sequence[str]) -> None:
        self.markdown.extend([f"- {item}" for item in items] + [""])
        self.body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.markdown.extend([markdown_table(header, rows), ""])
        self.body.append(html_table(header, rows))

    def code(self, lines: Sequence[str]) -> None:
        self.markdown.extend(["```bash", *lines, "```", ""])
        self.body.append("<pre>" + html.escape("\n".join(lines)) + "</pre>")

    def figure(self, figure: Any, markdown_note: str | None = None) -> None:
        """An interactive figure in the HTML (plotly.js inlined once); a note in the Markdown."""
        self.figures += 1
        self.body.append(figure.to_html(full_html=False, include_plotlyjs="inline" if self.figures == 1 else False))
        if markdown_note:
            self.markdown.extend([markdown_note, ""])

    def image(self, path: Path, data: bytes, alt: str, caption: str) -> None:
        """A PNG written beside the report, linked from the Markdown and embedded in the HTML."""
        path.write_bytes(data)
        self.markdown.extend([f"![{alt}]({path.name})", "", caption, ""])
        self.body.append(f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
        self.body.append(f"<p class='note'>{html.escape(caption)}</p>")

    def html_page(self, title: str) -> str:
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body>{''.join(self.body)}</body></html>")


@dataclass
class StudyInput:
    """Everything the report reads, loaded once: the study's runs, evaluations and table."""

    name: str
    registry: Any
    method: str
    records: list[Any]
    evaluations: dict[str, Any]
    table: Any
    definition: Any
    columns: dict[str, str]
    datasets: list[str]
    fractions: list[float]
    levels: list[str]
    fraction: float
    level: str
    comparisons: list[Any] = field(default_factory=list)


def training_set_sizes(records: Sequence[Any]) -> dict[str, int]:
    """Run id -> number of training images, from the run's split (each dataset loaded once, from
    its cache). Runs whose dataset cannot be loaded here are left out."""
    from core.datasets import load_dataset, split

    loaded: dict[tuple[Any, ...], Any] = {}
    sizes = {}
    for record in records:
        config = record.config
        key = (config.dataset, config.root, config.image_size)
        if key not in loaded:
            try:
                loaded[key] = load_dataset(config.dataset, config.root, split="train", size=config.image_size)
            except (UNetLabError, OSError):
                loaded[key] = None
        if loaded[key] is None:
            continue
        try:
            parts = split(loaded[key], config.train_fraction, config.seed, config.validation_fraction,
                          strategy=config.split_strategy, group_pattern=config.group_pattern)
        except UNetLabError:
            continue
        sizes[record.id] = len(parts.train)
    return sizes


def load_study_input(name: str, registry: Registry, method: str, fraction: float | None,
                     level: str | None) -> StudyInput:
    """Read a study's runs and evaluations and check the chosen Table 1 setting."""
    from core.study import load_study, stored_evaluations, study_records, study_table

    records = study_records(name, registry)
    evaluations = stored_evaluations(records, registry)
    table = study_table(name, registry, method=method, records=records, evaluations=evaluations)
    sizes = training_set_sizes(records)
    table[TRAINING_IMAGES_COLUMN] = [sizes.get(run_id, float("nan")) for run_id in table["Run"]]
    fractions = sorted(set(float(f) for f in table["Train fraction"]))
    levels = list(dict.fromkeys(table["Augmentation"]))
    fraction = fractions[0] if fraction is None else float(fraction)
    if not any(math.isclose(fraction, f) for f in fractions):
        raise UNetLabError(f"--fraction {fraction:g}: the study has train fractions {', '.join(f'{f:g}' for f in fractions)}")
    level = level or ("none" if "none" in levels else levels[0])
    if level not in levels:
        raise UNetLabError(f"--level {level}: the study has augmentation levels {', '.join(levels)}")
    return StudyInput(name=name, registry=registry, method=method, records=records, evaluations=evaluations,
                      table=table, definition=load_study(name, registry), columns=metric_columns(table, method),
                      datasets=list(dict.fromkeys(table["Dataset"])), fractions=fractions, levels=levels,
                      fraction=fraction, level=level)


def dataset_metrics(study: StudyInput, dataset: str) -> dict[str, str]:
    """The metrics reported for ``dataset``: short key -> column (membrane F1 on membrane sets)."""
    columns, table = study.columns, study.table
    rows_of = table[table["Dataset"] == dataset]
    membrane = (is_membrane_dataset(dataset) and columns["membrane_f1"] in table
                and rows_of[columns["membrane_f1"]].notna().any())
    return {key: columns[key] for key in ["pixel_f1", *(["membrane_f1"] if membrane else []), "dsb_map", "ap50"]}


def equal_budget_epoch(study: StudyInput) -> int | None:
    """The budget (in epochs) at which every evaluated run of an early-stopped study can be compared:
    the fewest epochs any of them trained. None when no run stopped early (the runs' own budgets
    are then equal already, or the study has no patience) or when that is under 2 epochs."""
    evaluated = study.table[study.table[study.columns["roc_auc"]].notna()]
    records = {record.id: record for record in study.records}
    runs = [records[run_id] for run_id in evaluated["Run"] if run_id in records]
    if not any(record.config.early_stopping_patience for record in runs):
        return None
    trained = [max((row["epoch"] for row in study.registry.epochs(record.id)), default=0) for record in runs]
    if not trained or len(set(trained)) == 1 or min(trained) < 2:
        return None
    return int(min(trained))


def budget_column(epoch: int) -> str:
    return f"validation pixel F1 at equal budget (best of epochs 1-{epoch})"


def add_budget_scores(study: StudyInput, epoch: int) -> str:
    """Add each run's best validation pixel F1 over its first ``epoch`` epochs (from its stored
    per-epoch validation) to the study table; the column's name."""
    column = budget_column(epoch)
    scores = []
    for run_id in study.table["Run"]:
        values = [row.get("val_f1") for row in study.registry.epochs(run_id) if 1 <= row["epoch"] <= epoch]
        values = [v for v in values if v is not None]
        scores.append(max(values) if len(values) == epoch else float("nan"))
    study.table[column] = scores
    return column


def study_comparisons(study: StudyInput) -> list[Any]:
    """Every level against none, paired by seed, for every dataset, setting, fraction and
    compared metric (pixel F1, membrane F1 on membrane sets, DSB mAP), and, in a study with early
    stopping, the pixel F1 at an equal budget (:func:`equal_budget_epoch`); Holm-adjusted together."""
    from core.tables import evaluated_rows, level_comparisons, with_holm

    comparisons = []
    budget = equal_budget_epoch(study)
    budget_metric = {"budget_f1": add_budget_scores(study, budget)} if budget else {}
    evaluated = evaluated_rows(study.table)
    for dataset in study.datasets:
        metrics = {key: column for key, column in dataset_metrics(study, dataset).items() if key != "ap50"}
        comparisons += level_comparisons(evaluated[evaluated["Dataset"] == dataset], {**metrics, **budget_metric},
                                         study.evaluations, method=study.method)
    return with_holm(comparisons)


def write_overview(doc: Document, study: StudyInput) -> None:
    from core.tables import format_time

    evaluated = study.table[study.columns["roc_auc"]].notna()
    doc.markdown.extend([f"# Study {study.name}", ""])
    doc.body.append(f"<h1>{html.escape(f'Study {study.name}')}</h1>")
    parts = sorted({label for label in study.table.get("Evaluated on", []) if label})
    doc.paragraph(f"{len(study.table)} runs on {', '.join(study.datasets)}; {int(evaluated.sum())} evaluated on "
                  f"their fixed validation part (best checkpoint; {'; '.join(parts) or 'no evaluation yet'}). "
                  f"Instance scores use post-processing '{study.method}'. Report written {format_time(time.time())}.")


def write_machine_and_time(doc: Document, study: StudyInput) -> None:
    from core.study import describe_machine, machine_info
    from core.tables import format_duration, format_time

    doc.heading("Machine, wall time and command")
    grids = study.definition.grids if study.definition else []
    machines = list(dict.fromkeys(describe_machine(grid.machine) for grid in grids if grid.machine))
    if not machines:
        machines = [describe_machine(machine_info()) + " (the machine writing this report; none was recorded)"]
    times = study_times(study.records, study.evaluations)
    span = format_duration(times["span_seconds"])
    if times["first_start"]:
        span += f" ({format_time(times['first_start'])} to {format_time(times['last_finish'])})"
    doc.table(["", ""], [["machine", "; ".join(machines)],
                         ["sum of run times (training + evaluation)",
                          format_duration(times["sum_seconds"]) + f" over {times['n_timed']} runs"],
                         ["first start to last finish", span]])
    doc.paragraph("Run times count from each run's last (re)start, so a resumed run counts its last part only. "
                  "The worker starts the next run while the previous one is being evaluated, so the sum of run "
                  "times can exceed the span from first start to last finish.")
    commands = [grid.command for grid in grids if grid.command]
    if commands:
        doc.code(commands)
    else:
        doc.paragraph("No command recorded (the study was launched from the app's Train page).")


def write_table1(doc: Document, study: StudyInput) -> None:
    doc.heading(f"The paper's Table 1, redone: train fraction {study.fraction:.0%}, augmentation {study.level}")
    header, rows, notes = table1(study.table, study.datasets, study.fraction, study.level, study.method)
    doc.table(header, rows)
    for note in notes:
        doc.paragraph(note)


def write_methods(doc: Document, study: StudyInput) -> None:
    from core.postprocess import METHODS
    from core.study import study_table

    doc.heading(f"Post-processing methods side by side: train fraction {study.fraction:.0%}, "
                f"augmentation {study.level}")
    tables = {other: study.table if other == study.method
              else study_table(study.name, study.registry, method=other, records=study.records,
                               evaluations=study.evaluations)
              for other in METHODS}
    doc.table(*methods_table(tables, study.datasets, study.fraction, study.level))
    doc.paragraph("The same probability maps split into objects three ways: 'components' (connected components "
                  "after hole filling and small-object removal), 'watershed' (distance-transform peaks as markers) "
                  "and 'kmeans-watershed' (the paper's: K-means on each component's pixel coordinates, K by the "
                  "elbow of the SSE curve, centres as markers). Pixel scores do not depend on it.")


def write_statistics(doc: Document, study: StudyInput) -> None:
    """How the report compares settings: pairing, tests, intervals and the Holm family."""
    tested = sum(c.paired.p_t is not None for c in study.comparisons)
    doc.heading("How settings are compared")
    doc.paragraph(
        "Runs are grouped by setting: every run setting except the seed and bookkeeping (study, notes, device, "
        "threads); runs of different settings (another budget, width, learning rate...) are never averaged "
        "together. Within a setting, runs with the same seed share the split and the initial weights, so each "
        "augmentation level is compared with none paired by seed, at the same train fraction: the paired t-test "
        "over seeds (and the Wilcoxon signed-rank test where at least 5 seeds differ; with 5 its smallest p is "
        "0.0625), the effect size d_z (mean difference / sd of the differences), a 95% t interval over seeds of "
        "the run scores' difference, and a 95% two-stage bootstrap interval (seeds, then validation images "
        "within each seed, 10,000 resamples) of the mean per-image difference, from the per-image scores stored "
        "with each evaluation (pixel F1 and DSB mAP; the membrane F1 has no per-image scores, so its interval is "
        "the t one). "
        + (f"The runs stopped early at different epochs (patience {patience_text(study)}), so levels are compared "
           f"twice: at convergence (each run's best checkpoint, the scores above) and at an equal budget: "
           f"'{budget_column(budget)}' is each run's best validation pixel F1 within the first {budget} epochs "
           f"(the fewest any run of the study trained), read from its per-epoch validation, with a t interval over "
           "seeds. " if (budget := equal_budget_epoch(study)) else "")
        + f"p-values are Holm-adjusted over all {tested} tested comparisons of this report (family-wise error 5%). "
        "'Not distinguishable' means the data cannot tell the settings apart with these seeds, not that they are "
        "equal.")


def patience_text(study: StudyInput) -> str:
    values = sorted({r.config.early_stopping_patience for r in study.records if r.config.early_stopping_patience})
    return ", ".join(f"{v} epochs" for v in values) or "none"


def write_comparisons(doc: Document, comparisons: Sequence[Any], dataset: str, level: int = 3) -> None:
    of_dataset = [c for c in comparisons if c.dataset == dataset]
    if not of_dataset:
        return
    doc.heading("Does augmentation help? Each level against none, paired by seed", level)
    for setting in dict.fromkeys(c.setting for c in of_dataset):
        these = [c for c in of_dataset if c.setting == setting]
        doc.table(*comparison_rows(these))
        doc.bullets([c.sentence() for c in these])
    doc.paragraph("Differences are level minus none (positive: the level scores higher). 'mean difference over "
                  "seeds' uses each run's score (pixel scores pooled over the validation images); 'mean per-image "
                  "difference' averages the per-image scores, so the two can differ. p Holm is adjusted over every "
                  "comparison in this report; n is the seeds paired (x validation images per seed).")


def learning_curve_rows(rows: Any, metric: str) -> dict[str, Any]:
    """Level -> its runs' (training images, score, seed) for one setting of one dataset."""
    import pandas as pd

    from core.tables import level_order

    out = {}
    for level in level_order(rows["Augmentation"]):
        at = rows[(rows["Augmentation"] == level)].dropna(subset=[metric, TRAINING_IMAGES_COLUMN])
        if not at.empty:
            out[level] = pd.DataFrame({"n": at[TRAINING_IMAGES_COLUMN].astype(float), "score": at[metric].astype(float),
                                       "seed": at["Seed"].astype(int)})
    return out


def write_learning_curves(doc: Document, rows: Any, metrics: Mapping[str, str], dataset: str, setting: str,
                          level: int = 3) -> None:
    """Score against training images per level, the fitted power law and what twice the images buys."""
    from core.figures import learning_curve_figure
    from core.stats import fit_learning_curve
    from core.tables import METRIC_WORDS

    if TRAINING_IMAGES_COLUMN not in rows or rows[TRAINING_IMAGES_COLUMN].notna().sum() == 0:
        return
    sizes = rows[TRAINING_IMAGES_COLUMN].dropna().nunique()
    if sizes < 3:
        doc.paragraph(f"Learning curve: not fitted, {sizes} distinct training-set size{'s' if sizes != 1 else ''} "
                      "measured in this setting (a power law needs at least 3).")
        return
    doc.heading("Learning curves: score against the number of training images", level)
    panels, sentences, fitted = {}, [], False
    for key, metric in metrics.items():
        panel = {}
        for level, points in learning_curve_rows(rows, metric).items():
            curve = fit_learning_curve(points["n"], points["score"], points["seed"], ceiling=1.0)
            panel[level] = (points, curve)
            largest = float(points["n"].max())
            sentences.append(f"{METRIC_WORDS.get(key, metric)}, {level}: "
                             + curve.sentence(largest, largest, metric=METRIC_WORDS.get(key, metric)))
            fitted = fitted or curve.fitted
        panels[metric] = panel
    if fitted:
        doc.figure(learning_curve_figure(panels, title=f"{dataset} ({setting}): score against training images"),
                   "(figure in report.html: mean and 95% t interval over seeds at each training-set size, the "
                   "fitted power law a - b n^-c with its bootstrap band)")
    doc.bullets(sentences)
    doc.paragraph("Fits of score = a - b n^(-c) to every run (n training images, a at most 1), by least squares; "
                  "the interval resamples whole seeds (2,000 bootstrap refits, widened for few seeds). 'From N to "
                  "2N' starts at the largest training set measured, so it extrapolates: read it as a hint of "
                  "whether more images would help, not as a measurement.")


def write_dataset(doc: Document, study: StudyInput, dataset: str, out: Path) -> list[Path]:
    """Per setting: grids with seed-noise marks, paired level-vs-none comparisons, learning
    curves and lines; then the main setting's curves and image strip."""
    from core.figures import curves_from_arrays, grid_heatmap, roc_pr_figures
    from core.overlays import png_bytes
    from core.tables import grid_summary, setting_groups, variation_text

    table, columns = study.table, study.columns
    doc.heading(dataset)
    rows_of = table[(table["Dataset"] == dataset) & table[columns["roc_auc"]].notna()]
    if rows_of.empty:
        doc.paragraph("No evaluated runs yet.")
        return []
    metrics_here = dataset_metrics(study, dataset)
    groups = setting_groups(rows_of)
    if len(groups) > 1:
        doc.paragraph(f"{len(groups)} settings ({variation_text(rows_of)}), each shown on its own: their runs are "
                      "never averaged together.")
    sub = 4 if len(groups) > 1 else 3
    for setting, rows in groups.items():
        if len(groups) > 1:
            doc.heading(f"{dataset}, setting: {setting}", 3)
        else:
            doc.paragraph(f"Setting: {setting}.")
        for metric in metrics_here.values():
            doc.heading(metric, sub)
            header, grid_lines, notes = grid_rows(grid_table(rows, dataset, metric, setting))
            doc.table(header, grid_lines)
            for note in notes:
                doc.paragraph(note)
            doc.figure(grid_heatmap(grid_summary(rows, metric),
                                    title=f"{dataset}: {metric}, mean ± sd over seeds ({setting})"))
        write_comparisons(doc, [c for c in study.comparisons if c.setting == setting], dataset, sub)
        write_learning_curves(doc, rows, {k: v for k, v in metrics_here.items() if k != "ap50"}, dataset, setting, sub)
        doc.heading("Metrics versus train fraction", sub)
        doc.figure(fraction_lines_figure(rows, dataset, metrics_here),
                   "(figure in report.html: one line per augmentation level, error bars = sd over seeds)")

    setting, rows = next(iter(groups.items()))
    cells = representative_runs(rows, dataset)
    curves = {}
    for (level, fraction), run_id in sorted(cells.items(), key=lambda item: (item[0][1], study.levels.index(item[0][0]))):
        stored = curves_from_arrays(study.registry.evaluation_arrays(run_id, "val"))
        if stored is not None:
            curves[f"{level} {fraction:.0%}"] = stored
    where = f" ({setting})" if len(groups) > 1 else ""
    if curves:
        doc.heading(f"ROC and precision-recall curves (pixels){where}", 3)
        roc, pr = roc_pr_figures(curves, float(rows["Threshold"].mode().iloc[0]))
        seed = int(rows["Seed"].min())
        doc.figure(roc)
        doc.figure(pr, f"(figures in report.html: one curve per cell, seed {seed} runs)")
    strip = image_strip(cells, study.registry)
    if strip is None:
        return []
    doc.heading(f"The same validation image across the grid{where}", 3)
    rgb, caption = strip
    path = out / f"strip_{re.sub(r'[^A-Za-z0-9._-]', '_', dataset)}.png"
    doc.image(path, png_bytes(rgb), f"{dataset} strip", caption)
    return [path]


def write_every_run(doc: Document, study: StudyInput) -> None:
    from core.tables import format_duration

    doc.heading("Every run")
    keys = ["pixel_f1", "dsb_map", "paper_map", "ap50", "roc_auc", "average_precision"]
    header = ["Run", "Dataset", "Train fraction", "Augmentation", "Seed", SETTING_COLUMN, "Status", STOPPED_COLUMN,
              "Best epoch", TRAINING_IMAGES_COLUMN, "Evaluated on", *(study.columns[key] for key in keys), "Run time"]
    rows = [[row["Run"], row["Dataset"], f"{row['Train fraction']:.0%}", row["Augmentation"], row["Seed"],
             row[SETTING_COLUMN], row["Status"], row[STOPPED_COLUMN] or "-", number(row["Best epoch"], 0),
             number(row.get(TRAINING_IMAGES_COLUMN), 0), row.get("Evaluated on", ""),
             *(number(row[study.columns[key]]) for key in keys),
             format_duration(row[RUN_TIME_COLUMN])] for _, row in study.table.iterrows()]
    doc.table(header, rows)
    doc.paragraph("Scores on each run's fixed validation part (never trained on); pixel scores sum TP/FP/FN over "
                  "the validation images; mAPs are means over images. '-': not evaluated. Every setting and metric "
                  "of every run: results.csv (the Compare page can show its grid without the registry).")


def build_report(name: str, out_dir: str | Path, registry: Registry | None = None, method: str = "components",
                 fraction: float | None = None, level: str | None = None) -> ReportFiles:
    """Write the study's HTML report, Markdown summary, results table and image strips into ``out_dir``.

    Parameters
    ----------
    name : study name
    out_dir : folder (created if needed)
    method : post-processing method of the instance scores
    fraction, level : the setting of the Table 1 comparison (default: the smallest train
        fraction of the study, and level ``none``, else the first level present)

    Raises
    ------
    UNetLabError
        No runs in the study, or a chosen fraction / level that the study does not have.
    """
    from core.runs import Registry

    study = load_study_input(name, registry or Registry(), method, fraction, level)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = Document()
    write_overview(doc, study)
    write_machine_and_time(doc, study)
    write_table1(doc, study)
    write_methods(doc, study)
    study.comparisons = study_comparisons(study)
    write_statistics(doc, study)
    images = [path for dataset in study.datasets for path in write_dataset(doc, study, dataset, out)]
    write_every_run(doc, study)

    table_path = out / "results.csv"
    study.table.to_csv(table_path, index=False)
    markdown_path = out / "summary.md"
    markdown_path.write_text("\n".join(doc.markdown).rstrip() + "\n")
    html_path = out / "report.html"
    html_path.write_text(doc.html_page(f"Study {name}"))
    return ReportFiles(html=html_path, markdown=markdown_path, table=table_path, images=images)
