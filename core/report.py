"""The report of a study: a self-contained HTML page and a Markdown summary.

``build_report(name, out_dir)`` writes into ``out_dir``:

- ``report.html``: every table and plotly figure (plotly.js inlined once, so the page
  opens offline) and the image strips embedded as base64 PNGs;
- ``summary.md``: the same tables as Markdown, linking the strips;
- ``strip_<dataset>.png``: the same validation image across the grid, errors coloured.

Sections: the machine, wall time and exact commands; a table in the form of the paper's
Table 1 (datasets as columns, mAP and F1 as rows) for one train fraction and level, with
the paper's figures beside ours where we know them; per dataset, the fraction x level grid
of mean ± sd over seeds for pixel F1, DSB mAP and AP@0.5 with the best cell marked and the
cells within seed noise of it; metric-versus-fraction lines; ROC/PR overlays; and one row
per run with its numbers.

Seed noise: two cells are called "within seed noise" when Welch's t-test (scipy,
unequal variances) of their per-seed values gives p >= 0.05; with fewer than two seeds in
either cell there is no noise estimate and the report says so.
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
from core.stats import NOISE_ALPHA, CellStats, NoiseVerdict, format_cell, within_seed_noise
from core.tables import RUN_TIME_COLUMN

if TYPE_CHECKING:
    from core.runs import Registry

#: The paper's Table 1 per dataset (its five datasets). We do not have the table, so every
#: entry is None and is printed as :data:`NOT_AVAILABLE`; fill in a figure only from the paper.
PAPER_TABLE1: dict[str, dict[str, float | None]] = {
    "dsb2018": {"mAP": None, "F1": None},
    "isbi2012": {"mAP": None, "F1": None},
    "isbi2013": {"mAP": None, "F1": None},
    "ncmir": {"mAP": None, "F1": None},
    "epfl": {"mAP": None, "F1": None},
}
#: What we do know: the ranges the paper reports across its five datasets, and one claim.
PAPER_RANGES: dict[str, tuple[float, float]] = {"F1": (0.89, 0.97), "mAP": (0.23, 0.57)}
PAPER_CLAIM = "F1 0.96 after training on 10% of the images"
NOT_AVAILABLE = "n/a (not available to us)"


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
    """One metric on one dataset: cells keyed by (augmentation level, train fraction)."""

    dataset: str
    metric: str
    levels: list[str]
    fractions: list[float]
    cells: dict[tuple[str, float], CellStats]
    best: tuple[str, float] | None
    verdicts: dict[tuple[str, float], NoiseVerdict]


def grid_table(table: Any, dataset: str, metric: str) -> GridTable:
    """Per-seed values of ``metric`` for every (level, fraction) cell of ``dataset``, the best
    cell (highest mean) and each other cell's seed-noise verdict against it."""
    from core.tables import grid_summary

    rows = table[(table["Dataset"] == dataset)].dropna(subset=[metric])
    if rows.empty:
        return GridTable(dataset, metric, [], [], {}, None, {})
    summary = grid_summary(rows, metric)
    levels, fractions = list(summary.mean.index), [float(f) for f in summary.mean.columns]
    cells = {}
    for (level, fraction), group in rows.groupby(["Augmentation", "Train fraction"]):
        cells[(level, float(fraction))] = CellStats(tuple(float(v) for v in group[metric]))
    best = max(cells, key=lambda key: cells[key].mean)
    verdicts = {key: within_seed_noise(cells[best].values, stats.values) for key, stats in cells.items() if key != best}
    return GridTable(dataset, metric, levels, fractions, cells, best, verdicts)


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
        near = [f"{lv} {fr:.0%} (p = {v.p_value:.2f})" for (lv, fr), v in grid.verdicts.items() if v.within]
        apart = [f"{lv} {fr:.0%}" for (lv, fr), v in grid.verdicts.items() if v.within is False]
        unknown = [f"{lv} {fr:.0%}" for (lv, fr), v in grid.verdicts.items() if v.within is None]
        ties = [f"{lv} {fr:.0%}" for (lv, fr), v in grid.verdicts.items() if v.difference == 0]
        note = f"Best: {level} at {fraction:.0%} (highest mean)."
        if near:
            note += (f" Not distinguishable from it with these seeds (≈, Welch t-test p ≥ {NOISE_ALPHA}; "
                     f"not the same as equal): {', '.join(near)}.")
        if apart:
            note += f" Worse beyond seed noise (Welch t-test p < {NOISE_ALPHA}): {', '.join(apart)}."
        if unknown and grid.cells[grid.best].n < 2:
            note += " No seed-noise estimate: the best cell has fewer than 2 seeds."
        elif unknown:
            note += f" No seed-noise estimate (fewer than 2 seeds in the cell): {', '.join(unknown)}."
        if ties:
            note += f" Same mean as the best: {', '.join(ties)}."
        notes.append(note)
    return header, rows, notes


def augmentation_effects(table: Any, dataset: str, metrics: Sequence[str], reference: str = "none"
                         ) -> tuple[list[str], list[list[str]]]:
    """Each augmentation level against ``reference`` at the same train fraction: the change of
    the mean, and Welch's t-test p over seeds, for every metric (columns) and cell (rows)."""
    rows_of = table[table["Dataset"] == dataset]
    header = ["level vs " + reference, "train fraction", *metrics]
    rows = []
    levels = [level for level in dict.fromkeys(rows_of["Augmentation"]) if level != reference]
    order = {level: position for position, level in enumerate(AUGMENTATION_LEVELS)}
    for level in sorted(levels, key=lambda lv: order.get(lv, len(order))):
        for fraction in sorted(set(float(f) for f in rows_of["Train fraction"])):
            at = rows_of[np.isclose(rows_of["Train fraction"], fraction)]
            line = [f"{level} − {reference}", f"{fraction:.0%}"]
            for metric in metrics:
                base = at[at["Augmentation"] == reference][metric].dropna().to_numpy(float)
                other = at[at["Augmentation"] == level][metric].dropna().to_numpy(float)
                if not base.size or not other.size:
                    line.append("no runs")
                    continue
                verdict = within_seed_noise(other, base)
                text = f"{verdict.difference:+.4f}"
                line.append(text + ("" if verdict.within is None else f" (p = {verdict.p_value:.2f})"))
            if any(cell != "no runs" for cell in line[2:]):
                rows.append(line)
    return header, rows


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


def table1(table: Any, datasets: Sequence[str], fraction: float, level: str, method: str
           ) -> tuple[list[str], list[list[str]], list[str]]:
    """The paper's Table 1 form: datasets as columns; our mAP and F1 beside the paper's."""
    columns = metric_columns(table, method)
    chosen = table[(np.isclose(table["Train fraction"], fraction)) & (table["Augmentation"] == level)]

    def ours(dataset: str, key: str) -> str:
        return cell_text(chosen[chosen["Dataset"] == dataset], columns[key])

    def paper(dataset: str, key: str) -> str:
        value = PAPER_TABLE1.get(dataset, {}).get(key)
        return NOT_AVAILABLE if value is None else f"{value:.2f}"

    header = ["metric", *datasets]
    rows = [
        [f"mAP (ours): {columns['paper_map']}", *(ours(d, "paper_map") for d in datasets)],
        ["mAP (the paper's Table 1)", *(paper(d, "mAP") for d in datasets)],
        [f"F1 (ours): {columns['pixel_f1']}", *(ours(d, "pixel_f1") for d in datasets)],
        ["F1 (the paper's Table 1)", *(paper(d, "F1") for d in datasets)],
        [f"also ours: {columns['dsb_map']}", *(ours(d, "dsb_map") for d in datasets)],
    ]
    membrane_sets = [d for d in datasets if is_membrane_dataset(d)]
    if membrane_sets:
        rows.append([f"also ours, EM membrane sets: {columns['membrane_f1']} (membrane F1)",
                     *(ours(d, "membrane_f1") if d in membrane_sets else "-" for d in datasets)])
    f1_means = chosen.groupby("Dataset")[columns["pixel_f1"]].mean().dropna()
    map_means = chosen.groupby("Dataset")[columns["paper_map"]].mean().dropna()
    low_f1, high_f1 = PAPER_RANGES["F1"]
    low_map, high_map = PAPER_RANGES["mAP"]
    notes = [
        f"Train fraction {fraction:.0%}, augmentation {level}; cells are mean ± sd over seeds (n runs). "
        "We read the paper's mAP as its eq. (4)-(5) and its F1 as the pixel F1 (Dice) at threshold 0.5.",
        f"The paper's per-dataset Table 1 is not available to us. What we know: across its five datasets it "
        f"reports F1 {low_f1:.2f}–{high_f1:.2f} and mAP {low_map:.2f}–{high_map:.2f}, and it claims "
        f"\"{PAPER_CLAIM}\".",
    ]
    if len(f1_means):
        notes.append(f"Ours at this setting: F1 {f1_means.min():.4f}–{f1_means.max():.4f}"
                     + (f", mAP {map_means.min():.4f}–{map_means.max():.4f}" if len(map_means) else "")
                     + f" across {len(f1_means)} dataset(s); datasets with mean F1 inside the paper's range: "
                     + (", ".join(d for d, v in f1_means.items() if low_f1 <= v <= high_f1) or "none") + ".")
    else:
        notes.append("No evaluated run at this fraction and level.")
    if membrane_sets:
        notes.append(f"On {', '.join(membrane_sets)} the positive class is the cell interior (most of each image), "
                     "so the pixel F1 above is high even for a poor membrane map; the membrane F1 row scores the "
                     "thin membranes themselves and is the stricter figure.")
    return header, rows, notes


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
            cells = [cell_text(chosen[chosen["Dataset"] == d], columns[key]) for d in datasets]
            rows.append([method, columns[key].removesuffix(f" [{method}]"), *cells])
    return header, rows


def fraction_lines_figure(table: Any, dataset: str, metrics: Mapping[str, str]):
    """Metric versus train fraction, one line per augmentation level, error bars = sd over seeds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from core.figures import palette
    from core.tables import grid_summary

    rows = table[table["Dataset"] == dataset]
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


def load_study_input(name: str, registry: Registry, method: str, fraction: float | None,
                     level: str | None) -> StudyInput:
    """Read a study's runs and evaluations and check the chosen Table 1 setting."""
    from core.study import load_study, stored_evaluations, study_records, study_table

    records = study_records(name, registry)
    evaluations = stored_evaluations(records, registry)
    table = study_table(name, registry, method=method, records=records, evaluations=evaluations)
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


def write_dataset(doc: Document, study: StudyInput, dataset: str, out: Path) -> list[Path]:
    """Grids with seed-noise marks, level-vs-none effects, lines, curves and an image strip."""
    from core.figures import curves_from_arrays, grid_heatmap, roc_pr_figures
    from core.overlays import png_bytes
    from core.tables import grid_summary

    table, columns = study.table, study.columns
    doc.heading(dataset)
    rows_of = table[table["Dataset"] == dataset]
    if rows_of[columns["roc_auc"]].notna().sum() == 0:
        doc.paragraph("No evaluated runs yet.")
        return []
    membrane = (is_membrane_dataset(dataset) and columns["membrane_f1"] in table
                and rows_of[columns["membrane_f1"]].notna().any())
    metrics_here = {key: columns[key] for key in ["pixel_f1", *(["membrane_f1"] if membrane else []), "dsb_map", "ap50"]}
    for metric in metrics_here.values():
        doc.heading(metric, 3)
        header, rows, notes = grid_rows(grid_table(table, dataset, metric))
        doc.table(header, rows)
        for note in notes:
            doc.paragraph(note)
        doc.figure(grid_heatmap(grid_summary(rows_of, metric), title=f"{dataset}: {metric}, mean ± sd over seeds"))
    header, rows = augmentation_effects(table, dataset, list(metrics_here.values()))
    if rows:
        doc.heading("Does augmentation help? Each level against none at the same train fraction", 3)
        doc.table(header, rows)
        doc.paragraph("Difference of the means over seeds (positive: the level scores higher than no "
                      f"augmentation) and, where both cells have two or more seeds, Welch's t-test p; p < "
                      f"{NOISE_ALPHA} is a difference beyond seed noise. With two seeds per cell only large, "
                      "consistent differences reach it, and p ≥ 0.05 does not mean the levels are equal.")
    doc.heading("Metrics versus train fraction", 3)
    doc.figure(fraction_lines_figure(table, dataset, metrics_here),
               "(figure in report.html: one line per augmentation level, error bars = sd over seeds)")

    cells = representative_runs(table, dataset)
    curves = {}
    for (level, fraction), run_id in sorted(cells.items(), key=lambda item: (item[0][1], study.levels.index(item[0][0]))):
        stored = curves_from_arrays(study.registry.evaluation_arrays(run_id, "val"))
        if stored is not None:
            curves[f"{level} {fraction:.0%}"] = stored
    if curves:
        doc.heading("ROC and precision-recall curves (pixels)", 3)
        roc, pr = roc_pr_figures(curves, float(rows_of["Threshold"].mode().iloc[0]))
        seed = int(rows_of.loc[rows_of[columns["roc_auc"]].notna(), "Seed"].min())
        doc.figure(roc)
        doc.figure(pr, f"(figures in report.html: one curve per cell, seed {seed} runs)")
    strip = image_strip(cells, study.registry)
    if strip is None:
        return []
    doc.heading("The same validation image across the grid", 3)
    rgb, caption = strip
    path = out / f"strip_{re.sub(r'[^A-Za-z0-9._-]', '_', dataset)}.png"
    doc.image(path, png_bytes(rgb), f"{dataset} strip", caption)
    return [path]


def write_every_run(doc: Document, study: StudyInput) -> None:
    from core.tables import format_duration

    doc.heading("Every run")
    keys = ["pixel_f1", "dsb_map", "paper_map", "ap50", "roc_auc", "average_precision"]
    header = ["Run", "Dataset", "Train fraction", "Augmentation", "Seed", "Status", "Epochs", "Evaluated on",
              *(study.columns[key] for key in keys), "Run time"]
    rows = [[row["Run"], row["Dataset"], f"{row['Train fraction']:.0%}", row["Augmentation"], row["Seed"],
             row["Status"], row["Epochs"], row.get("Evaluated on", ""),
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
    images = [path for dataset in study.datasets for path in write_dataset(doc, study, dataset, out)]
    write_every_run(doc, study)

    table_path = out / "results.csv"
    study.table.to_csv(table_path, index=False)
    markdown_path = out / "summary.md"
    markdown_path.write_text("\n".join(doc.markdown).rstrip() + "\n")
    html_path = out / "report.html"
    html_path.write_text(doc.html_page(f"Study {name}"))
    return ReportFiles(html=html_path, markdown=markdown_path, table=table_path, images=images)
