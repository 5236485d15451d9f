"""Comparison studies: a named grid of training runs, queued, resumed and tabulated.

A study is a name plus one or more *grids*; each grid is datasets x training budgets x
train fractions x augmentation levels x seeds, with shared training settings (a preset plus
explicit overrides). A *budget* is the number of optimiser steps a run may take: it sets the
run's epochs to budget / steps per epoch (with early stopping, the most it trains), so one
study compares levels at equal budgets and, with a large budget and a patience, at convergence. Every grid cell becomes one :class:`~core.config.RunConfig` with
``study=NAME``, queued through :mod:`core.queue` like the app's runs.

A cell is identified by its whole config except ``study``, ``notes`` and ``extra`` (see
:func:`run_identity`), so running a study again finds its earlier runs:

- finished and evaluated -> skipped;
- queued, running, or finished and still being evaluated -> left alone and waited for;
- failed or cancelled -> resumed (continues from its ``last.pt``);
- finished without an evaluation and no live process -> queued again, which evaluates it;
- no run yet -> queued.

The definition is stored as JSON beside the registry (``studies/NAME.json``), so
``python -m core study run --name NAME`` alone resumes the study. Running it with another
grid under the same name adds that grid to the study (e.g. a full grid on one dataset and
a smaller one on two others).

This module is also the home of grid expansion (:func:`configs_for_grid`, the Train
page's grids) and of the parsers of typed lists (:func:`parse_seeds`,
:func:`parse_fractions`, ...), shared by the CLI and the app.

>>> grid = StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.1, 0.5], augmentations=["none", "heavy"],
...                  seeds=[0])
>>> [config.label() for config in grid_configs(grid, "demo")]
['synthetic-nuclei 10% none s0', 'synthetic-nuclei 10% heavy s0', 'synthetic-nuclei 50% none s0', 'synthetic-nuclei 50% heavy s0']
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from core.config import AUGMENTATION_LEVELS, RunConfig
from core.errors import UNetLabError

PRESETS: tuple[str, ...] = ("default", "paper")
#: The paper's epoch counts are not available to us; this is a documented guess, not its figure.
PAPER_EPOCHS_GUESS: int = 50
#: Config fields a grid sets per cell; everything else is a shared setting.
GRID_FIELDS: tuple[str, ...] = ("dataset", "root", "train_fraction", "augmentation", "seed", "study")
#: Config fields that do not change what a run computes, left out of a cell's identity.
NON_IDENTITY_FIELDS: tuple[str, ...] = ("study", "notes", "extra")
if TYPE_CHECKING:  # imported inside the functions that need them
    import pandas as pd

    from core.runs import Registry

STUDY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# --------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------


@dataclass
class StudyGrid:
    """One grid of a study: the cross product of its lists, with shared settings.

    ``roots`` maps dataset -> folder (absolute once validated). ``overrides`` holds the
    shared settings given explicitly (RunConfig field -> value; ``image_size: None`` means
    native size); they win over the preset. ``command`` and ``machine`` record how and
    where the grid was launched.
    """

    datasets: list[str]
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.5, 0.8])
    #: Optimiser steps per run; each sets the run's epochs (budget / steps per epoch). Empty:
    #: the epochs of the preset or of the overrides.
    budgets: list[int] = field(default_factory=list)
    augmentations: list[str] = field(default_factory=lambda: ["none", "light", "heavy"])
    seeds: list[int] = field(default_factory=lambda: [0])
    #: Starting weights, a grid axis: None (from scratch), a run id or a shipped model's name.
    #: Empty: from scratch only (or the overrides' ``init_from``).
    init_from: list[str | None] = field(default_factory=list)
    roots: dict[str, str] = field(default_factory=dict)
    preset: str = "default"
    overrides: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    added: float = field(default_factory=time.time)

    def same_cells(self, other: "StudyGrid") -> bool:
        """True when both grids define the same runs (how and where they were launched aside)."""
        keys = ("datasets", "budgets", "fractions", "augmentations", "seeds", "roots", "preset", "overrides",
                "init_from")
        return all(getattr(self, key) == getattr(other, key) for key in keys)


@dataclass
class StudyDefinition:
    """A named study: its grids in the order they were added."""

    name: str
    grids: list[StudyGrid] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "StudyDefinition":
        return cls(name=values["name"], grids=[StudyGrid(**grid) for grid in values.get("grids", [])],
                   created=values.get("created", time.time()))

    def add_grid(self, grid: StudyGrid) -> bool:
        """Add ``grid`` unless an identical one is there; True if added."""
        if any(existing.same_cells(grid) for existing in self.grids):
            return False
        self.grids.append(grid)
        return True

    def configs(self) -> list[RunConfig]:
        """Every run of every grid, without duplicates (the first grid's order first)."""
        seen, out = set(), []
        for grid in self.grids:
            for config in grid_configs(grid, self.name):
                key = run_identity(config)
                if key not in seen:
                    seen.add(key)
                    out.append(config)
        return out


def check_study_name(name: str) -> str:
    """Return ``name`` if it is usable as a study (and file) name, else raise UNetLabError."""
    if not isinstance(name, str) or not STUDY_NAME_PATTERN.match(name):
        raise UNetLabError(f"study name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


# --------------------------------------------------------------------------------------
# Parsing the lists typed on the command line and on the Train page
# --------------------------------------------------------------------------------------


def parse_list(text: str, what: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (duplicates dropped); UNetLabError if empty."""
    items: list[str] = []
    for part in (text or "").split(","):
        part = part.strip()
        if part and part not in items:
            items.append(part)
    if not items:
        raise UNetLabError(f"{what}: give at least one value (comma-separated)")
    return items


def parse_fractions(text: str) -> list[float]:
    """``"0.1,0.2"`` (or ``"10%,20%"``) -> ``[0.1, 0.2]``, each in (0, 1]."""
    fractions = []
    for part in parse_list(text, "--fractions"):
        try:
            value = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise UNetLabError(f"--fractions: {part!r} is not a number such as 0.1 or 10%") from None
        if not 0 < value <= 1:
            raise UNetLabError(f"--fractions: {part!r} must be in (0, 1]")
        if value not in fractions:
            fractions.append(value)
    return fractions


def parse_augmentations(text: str) -> list[str]:
    levels = parse_list(text, "--augmentations")
    unknown = [level for level in levels if level not in AUGMENTATION_LEVELS]
    if unknown:
        raise UNetLabError(f"--augmentations: unknown level(s) {', '.join(unknown)}; "
                           f"choose from {', '.join(AUGMENTATION_LEVELS)}")
    return levels


def parse_init_from(text: str) -> list[str | None]:
    """``"none,starter-nuclei"`` -> [None, "starter-nuclei"]: "none" (or "scratch") is a random start."""
    starts: list[str | None] = []
    for part in parse_list(text, "--init-from"):
        start = None if part.lower() in ("none", "scratch") else part
        if start not in starts:
            starts.append(start)
    return starts


def parse_budgets(text: str) -> list[int]:
    """``"300,900"`` -> ``[300, 900]``: optimiser steps per run, each a positive whole number."""
    budgets: list[int] = []
    for part in parse_list(text, "--budgets"):
        try:
            value = int(part)
        except ValueError:
            raise UNetLabError(f"--budgets: {part!r} is not a whole number of optimiser steps, such as 300") from None
        if value < 1:
            raise UNetLabError(f"--budgets: {part!r} must be at least 1 step")
        if value not in budgets:
            budgets.append(value)
    return budgets


def budget_epochs(budget: int, steps_per_epoch: int) -> int:
    """The epochs of a run with ``budget`` optimiser steps; UNetLabError unless it divides exactly."""
    if budget % steps_per_epoch:
        raise UNetLabError(f"budget {budget} steps is not a whole number of epochs of {steps_per_epoch} steps; "
                           f"use a multiple of {steps_per_epoch} (or change --steps-per-epoch)")
    return budget // steps_per_epoch


def parse_roots(text: str | None) -> dict[str, str]:
    """``"isbi2012=../data/isbi2012,dsb2018=/d/dsb"`` -> ``{dataset: folder}`` (paths as given)."""
    roots: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UNetLabError(f"--roots: {part!r} is not of the form dataset=path "
                               "(e.g. isbi2012=../shared/data/isbi2012)")
        if name.strip() in roots:
            raise UNetLabError(f"--roots: dataset {name.strip()!r} is given twice")
        roots[name.strip()] = path.strip()
    return roots


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
# Presets and grid expansion
# --------------------------------------------------------------------------------------


def preset_settings(preset: str, dataset: str) -> dict[str, Any]:
    """Shared settings a preset gives one dataset (RunConfig field -> value).

    Both presets resize images to the paper's size for the dataset (DSB 2018 128x128, the
    EM sets 512x512; native size for sets the paper did not use), so that our numbers are
    comparable with its own.

    - ``default``: what measures best on the hardware at hand (see
      ``benchmarks/train_speed.py``): width 16, bf16 autocast where the CPU has it
      (precision ``auto``), 25 steps per epoch, and RunConfig's other defaults.
    - ``paper``: BCE loss, Adam, the classic width-64 U-Net of depth 4 and
      :data:`PAPER_EPOCHS_GUESS` epochs (the paper's epoch counts are unknown to us).
    """
    from core.datasets import get_spec

    if preset not in PRESETS:
        raise UNetLabError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    size = get_spec(dataset).paper_size
    if size is not None and size[0] != size[1]:
        raise UNetLabError(f"{dataset}: paper size {size} is not square; give --image-size")
    image_size = None if size is None else int(size[0])
    if preset == "paper":
        return {"image_size": image_size, "loss": "bce", "optimizer": "adam", "base_width": 64, "depth": 4,
                "epochs": PAPER_EPOCHS_GUESS}
    return {"image_size": image_size, "base_width": 16, "precision": "auto", "steps_per_epoch": 25}


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse overrides of grid fields or of names RunConfig does not have."""
    known = {f.name for f in dataclasses.fields(RunConfig)} - set(GRID_FIELDS) - {"extra"}
    bad = sorted(set(overrides) - known)
    if bad:
        raise UNetLabError(f"shared settings {', '.join(bad)} are not shared run settings; "
                           f"known: {', '.join(sorted(known))}")


def configs_for_grid(base: RunConfig, fractions: Iterable[float], levels: Iterable[str],
                     seeds: Iterable[int], study: str | None = None) -> list[RunConfig]:
    """One validated config per (train fraction, augmentation level, seed) of one dataset, in that order.

    ``base`` gives every other setting (it is not changed); ``study`` names the study of
    every config (default: the base config's). The Train page launches these runs, and
    :func:`grid_configs` builds each dataset's cells of a study grid with it.

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


def grid_configs(grid: StudyGrid, study: str) -> list[RunConfig]:
    """One validated RunConfig per cell, seeds outermost.

    Seeds come first so that a study stopped half-way has covered the whole grid once
    (seed 0) rather than some cells with every seed; within a seed: dataset, budget,
    fraction, level in the order given.
    """
    check_overrides(grid.overrides)
    if grid.budgets and "epochs" in grid.overrides:
        raise UNetLabError("--budgets sets each run's epochs (budget / steps per epoch): leave out --epochs")
    per_dataset = []
    for dataset in grid.datasets:
        base = RunConfig(**{**preset_settings(grid.preset, dataset), **grid.overrides,
                            "dataset": dataset, "root": grid.roots.get(dataset)})
        for budget in grid.budgets or [None]:
            if budget is not None:
                base = dataclasses.replace(base, epochs=budget_epochs(int(budget), base.steps_per_epoch))
            for start in grid.init_from or [base.init_from]:
                cell = dataclasses.replace(base, init_from=start)
                per_dataset.append(configs_for_grid(cell, grid.fractions, grid.augmentations, grid.seeds, study=study))
    seed_rank = {seed: rank for rank, seed in enumerate(grid.seeds)}
    ordered = [config for configs in per_dataset for config in configs]
    return sorted(ordered, key=lambda config: seed_rank[config.seed])  # stable: keeps the rest in order


def grid_from_config(base: RunConfig, fractions: Sequence[float], levels: Sequence[str],
                     seeds: Sequence[int]) -> StudyGrid:
    """The study grid of a grid launched from the app's Train page.

    Every shared setting of ``base`` goes into ``overrides``, so the preset adds nothing and
    :func:`grid_configs` gives back exactly the page's runs: ``python -m core study run --name``
    then resumes, reports and extends the study like one defined on the command line.
    """
    shared = {key: value for key, value in base.to_dict().items()
              if key not in GRID_FIELDS and key not in NON_IDENTITY_FIELDS}
    settings = ", ".join(f"{key}={value}" for key, value in sorted(shared.items()))
    command = (f"# launched from the app's Train page: {base.dataset}"
               + (f" ({base.root})" if base.root else "")
               + f"; fractions {', '.join(f'{f:g}' for f in fractions)}; levels {', '.join(levels)}; "
               f"seeds {', '.join(str(seed) for seed in seeds)}; {settings}")
    return StudyGrid(datasets=[base.dataset], fractions=[float(f) for f in fractions], augmentations=list(levels),
                     seeds=[int(seed) for seed in seeds], roots={base.dataset: base.root} if base.root else {},
                     overrides=shared, command=command, machine=machine_info())


def record_study(name: str, grid: StudyGrid, registry: Registry) -> bool:
    """Add ``grid`` to study ``name`` (created if new) and store it; True if the grid is new."""
    definition = load_study(check_study_name(name), registry) or StudyDefinition(name=name)
    added = definition.add_grid(grid)
    save_study(definition, registry)
    return added


def run_identity(config: RunConfig) -> str:
    """The key of a grid cell: the config as sorted JSON without study, notes and extra."""
    values = {key: value for key, value in config.to_dict().items() if key not in NON_IDENTITY_FIELDS}
    return json.dumps(values, sort_keys=True)


def validate_grid(grid: StudyGrid) -> StudyGrid:
    """Check a grid before anything is queued; return it with absolute roots.

    Every dataset is loaded once (as its runs will load it) and split at every fraction,
    so a missing folder, a wrong layout or too few images is reported now, naming the
    dataset, and not by a failed run an hour later.

    Raises
    ------
    UNetLabError
        (DatasetError, ConfigError) naming the dataset, folder or value at fault.
    """
    from core.datasets import get_spec, load_dataset, split

    if not grid.datasets:
        raise UNetLabError("--datasets: give at least one dataset")
    if any(not isinstance(budget, int) or budget < 1 for budget in grid.budgets):
        raise UNetLabError(f"--budgets: every budget must be a whole number of steps >= 1, got {grid.budgets}")
    for what, values in (("--fractions", grid.fractions), ("--augmentations", grid.augmentations),
                         ("--seeds", grid.seeds)):
        if not values:
            raise UNetLabError(f"{what}: give at least one value")
    if grid.preset not in PRESETS:
        raise UNetLabError(f"unknown preset {grid.preset!r}; choose from {', '.join(PRESETS)}")
    stray = sorted(set(grid.roots) - set(grid.datasets))
    if stray:
        raise UNetLabError(f"--roots names {', '.join(stray)}, which is not in --datasets ({', '.join(grid.datasets)})")
    roots = {}
    for dataset in grid.datasets:
        spec = get_spec(dataset)
        if spec.needs_root and dataset not in grid.roots:
            raise UNetLabError(f"dataset {dataset} needs its folder: add {dataset}=PATH to --roots")
        if dataset in grid.roots:
            folder = Path(grid.roots[dataset]).expanduser()
            if not folder.is_dir():
                raise UNetLabError(f"--roots: {dataset}={grid.roots[dataset]}: no such folder")
            roots[dataset] = str(folder.resolve())
    checked = dataclasses.replace(grid, roots=roots)
    configs = grid_configs(checked, "validation")  # validates every setting (ConfigError)
    for dataset in grid.datasets:
        config = next(c for c in configs if c.dataset == dataset)
        loaded = load_dataset(dataset, config.root, split="train", size=config.image_size)
        for fraction in grid.fractions:
            split(loaded, fraction, 0, config.validation_fraction, strategy=config.split_strategy, group_pattern=config.group_pattern)
    return checked


# --------------------------------------------------------------------------------------
# Storage: studies/NAME.json beside the registry
# --------------------------------------------------------------------------------------


def studies_dir(registry: Registry) -> Path:
    """Folder of the stored study definitions, beside the registry database."""
    return Path(registry.path).parent / "studies"


def definition_path(name: str, registry: Registry) -> Path:
    return studies_dir(registry) / f"{check_study_name(name)}.json"


def save_study(definition: StudyDefinition, registry: Registry) -> Path:
    """Write the definition atomically (temporary file, then rename); return its path."""
    path = definition_path(definition.name, registry)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(definition.to_dict(), indent=1))
    os.replace(temporary, path)
    return path


def load_study(name: str, registry: Registry) -> StudyDefinition | None:
    """The stored definition of study ``name``, or None when there is none."""
    path = definition_path(name, registry)
    if not path.is_file():
        return None
    try:
        return StudyDefinition.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as error:
        raise UNetLabError(f"{path}: not a readable study definition ({error})") from None


def study_names(registry: Registry) -> list[str]:
    """Studies with a stored definition or with runs in the registry, sorted."""
    stored = {path.stem for path in studies_dir(registry).glob("*.json")} if studies_dir(registry).is_dir() else set()
    in_registry = {run.study for run in registry.list_runs() if run.study}
    return sorted(stored | in_registry)


# --------------------------------------------------------------------------------------
# Skip / resume decisions
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunState:
    """What the skip logic needs to know about an existing run."""

    run_id: str
    status: str
    evaluated: bool
    created: float = 0.0


@dataclass
class PlannedRun:
    """One cell of a study and what running the study does with it.

    ``action``: ``skip`` (finished and evaluated), ``wait`` (queued, running or being
    evaluated), ``resume`` (failed or cancelled: queued again, continues from last.pt),
    ``evaluate`` (finished but never evaluated: queued again, which evaluates it) or
    ``queue`` (no run yet).
    """

    config: RunConfig
    action: str
    run_id: str | None = None


def decide_action(matches: Sequence[RunState]) -> tuple[str, str | None]:
    """The action for a cell given the existing runs with its identity, and the run it concerns.

    The best state wins: a finished, evaluated run; then one in flight; then one to
    evaluate; then the newest failed or cancelled one.
    """
    newest_first = sorted(matches, key=lambda state: state.created, reverse=True)
    for state in newest_first:
        if state.status == "finished" and state.evaluated:
            return "skip", state.run_id
    for state in newest_first:
        if state.status in ("queued", "running", "evaluating"):
            return "wait", state.run_id
    for state in newest_first:
        if state.status == "finished":
            return "evaluate", state.run_id
    for state in newest_first:
        if state.status in ("failed", "cancelled"):
            return "resume", state.run_id
    return "queue", None


def run_states(registry: Registry, study: str) -> dict[str, list[RunState]]:
    """Existing runs of a study grouped by cell identity (dead processes reaped first)."""
    registry.reap_dead()
    groups: dict[str, list[RunState]] = {}
    for run in registry.list_runs(study=study):
        state = RunState(run.id, run.status, registry.get_evaluation(run.id, "val") is not None, run.created)
        groups.setdefault(run_identity(run.config), []).append(state)
    return groups


def plan_study(definition: StudyDefinition, registry: Registry) -> list[PlannedRun]:
    """What running the study would do with each of its cells (nothing is changed)."""
    groups = run_states(registry, definition.name)
    plan = []
    for config in definition.configs():
        action, run_id = decide_action(groups.get(run_identity(config), []))
        plan.append(PlannedRun(config, action, run_id))
    return plan


def launch(plan: Sequence[PlannedRun], registry: Registry, max_parallel: int | None = None,
           start_worker: bool = True) -> list[str]:
    """Carry out a plan: queue new cells, resume or re-evaluate stopped runs, start the worker.

    Returns the run id of every cell, in plan order (the ids of newly queued runs filled in).
    """
    from core import queue

    new = [item for item in plan if item.action == "queue"]
    for item, run_id in zip(new, queue.enqueue([item.config for item in new], registry, start_worker=False)):
        item.run_id = run_id
    for item in plan:
        if item.action == "resume":
            queue.resume(item.run_id, registry, start_worker=False)
        elif item.action == "evaluate":
            registry.set_status(item.run_id, "queued")
    if start_worker and any(item.action != "skip" for item in plan):
        queue.ensure_worker(registry, max_parallel=max_parallel)
    return [item.run_id for item in plan]


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------


def run_done(record: Any, evaluated: bool = True) -> bool:
    """True when a run will change no more: finished, failed or cancelled (a run is only
    ``finished`` once its evaluation is stored, or when it was trained with --no-evaluate)."""
    return record.status in ("finished", "failed", "cancelled")


def run_seconds(record: Any, evaluation: Mapping[str, Any] | None) -> float | None:
    """Training plus evaluation time of a finished, evaluated run (since its last (re)start)."""
    if record.status != "finished" or not evaluation or record.started is None or record.finished is None:
        return None
    return (record.finished - record.started) + float(evaluation.get("seconds", 0.0))


def estimate_eta(finished_seconds: Sequence[float], n_waiting: int, running_elapsed: Sequence[float],
                 parallel: int = 1) -> float | None:
    """Seconds left: the mean duration of finished runs times the runs still to do.

    Parameters
    ----------
    finished_seconds : durations of the runs finished so far (the estimate's basis)
    n_waiting : runs not started yet
    running_elapsed : seconds each running run has been going (capped at the mean)
    parallel : runs trained at once

    Returns None while no run has finished.
    """
    if not finished_seconds:
        return None
    mean = sum(finished_seconds) / len(finished_seconds)
    left = mean * n_waiting + sum(max(0.0, mean - elapsed) for elapsed in running_elapsed)
    return left / max(1, parallel)


@dataclass
class StudyProgress:
    """Counts of a study's runs at one moment, and the ETA."""

    total: int
    done: int
    finished: int
    failed: int
    cancelled: int
    running: int
    queued: int
    eta_seconds: float | None
    mean_run_seconds: float | None


def study_progress(run_ids: Sequence[str], registry: Registry, parallel: int = 1) -> StudyProgress:
    """Where the given runs stand now (reaps dead processes first)."""
    registry.reap_dead()
    now = time.time()
    done = finished = failed = cancelled = running = queued = 0
    durations, running_elapsed = [], []
    for run_id in run_ids:
        record = registry.get_run(run_id)
        evaluation = registry.get_evaluation(run_id, "val")
        if run_done(record, evaluation is not None):
            done += 1
        if record.status == "finished":
            finished += 1
            seconds = run_seconds(record, evaluation)
            if seconds is not None:
                durations.append(seconds)
        elif record.status == "failed":
            failed += 1
        elif record.status == "cancelled":
            cancelled += 1
        elif record.status in ("running", "evaluating"):
            running += 1
            running_elapsed.append(now - (record.started or now))
        else:
            queued += 1
    eta = estimate_eta(durations, queued, running_elapsed, parallel)
    mean = sum(durations) / len(durations) if durations else None
    return StudyProgress(len(run_ids), done, finished, failed, cancelled, running, queued, eta, mean)


def follow(run_ids: Sequence[str], registry: Registry, poll_seconds: float = 1.0, show_progress: bool = True,
           max_parallel: int | None = None) -> StudyProgress:
    """Wait until every run is done, with a tqdm bar over finished runs and an ETA.

    The worker is started again if it died while runs wait in the queue. KeyboardInterrupt
    propagates (the caller says what keeps running).
    """
    from tqdm import tqdm

    from core import queue
    from core.tables import format_duration

    parallel = max_parallel or 1
    progress = study_progress(run_ids, registry, parallel)
    bar = tqdm(total=progress.total, initial=progress.done, unit="run", disable=not show_progress,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]",
               desc="study", dynamic_ncols=True)
    missing_since: float | None = None
    try:
        while True:
            bar.n = progress.done
            bar.set_postfix_str(f"{progress.running} running, {progress.queued} queued, "
                                f"{progress.failed + progress.cancelled} stopped, "
                                f"ETA {format_duration(progress.eta_seconds)}", refresh=True)
            if progress.done >= progress.total:
                return progress
            # A worker takes a few seconds to take its lock after it is started: restart
            # it only when it has been missing for a while (it died, or was killed).
            if progress.queued and not queue.worker_running(registry):
                missing_since = missing_since or time.time()
                if time.time() - missing_since > 10:
                    queue.ensure_worker(registry, max_parallel=max_parallel)
                    missing_since = None
            else:
                missing_since = None
            time.sleep(poll_seconds)
            progress = study_progress(run_ids, registry, parallel)
    finally:
        bar.close()


# --------------------------------------------------------------------------------------
# The tidy results table
# --------------------------------------------------------------------------------------

# The study table's extra column titles (EXTRA_CONFIG_COLUMNS, RUN_TIME_COLUMN) live in core.tables,
# whose comparable_metrics must tell them from metrics: tables never imports study, so no cycle.


def study_records(name: str, registry: Registry) -> list[Any]:
    """A study's runs, oldest first (the order they were queued)."""
    registry.reap_dead()
    return sorted(registry.list_runs(study=name), key=lambda run: (run.created, run.id))


def stored_evaluations(records: Sequence[Any], registry: Registry) -> dict[str, Any]:
    """Run id -> its stored validation evaluation (None if not evaluated), read once for reuse."""
    return {record.id: registry.get_evaluation(record.id, "val") for record in records}


def study_table(name: str, registry: Registry, method: str = "components",
                records: Sequence[Any] | None = None,
                evaluations: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The tidy results table: one row per run, every config field and every metric.

    Built on :func:`core.tables.runs_table` (the Compare page's table, same column
    names: metrics named exactly as in :data:`core.metrics.METRIC_NAMES`, instance metrics
    for post-processing ``method``; every config field; the ``Setting`` column naming each
    run's setting, see :func:`core.tables.setting_label`), with the remaining stored metrics
    and the run's duration added.

    Raises
    ------
    UNetLabError
        If the study has no runs, or ``method`` is not a post-processing method.
    """
    import pandas as pd

    from core.metrics import METRIC_NAMES, metric_name
    from core.postprocess import PARAMETERS
    from core.tables import RUN_TIME_COLUMN, format_time, instance_column, runs_table

    if method not in PARAMETERS:
        raise UNetLabError(f"unknown post-processing method {method!r}; choose one of {', '.join(PARAMETERS)}")
    records = list(records) if records is not None else study_records(name, registry)
    if not records:
        raise UNetLabError(f"study {name!r} has no runs in the registry {registry.path}")
    if evaluations is None:
        evaluations = stored_evaluations(records, registry)
    table = runs_table(records, evaluations, method=method)
    thresholds = [record.config.threshold for record in records]
    threshold = max(set(thresholds), key=thresholds.count)
    extra_rows = []
    for record in records:
        summary = evaluations[record.id]
        row: dict[str, Any] = {}
        pixel = (summary or {}).get("pixel", {})
        instances = (summary or {}).get("instances", {}).get(method, {})
        restricted = (summary or {}).get("foreground_restricted", {}).get(method, {})
        nan = float("nan")
        row[metric_name("pixel_accuracy", threshold)] = pixel.get("accuracy", nan)
        row[metric_name("pixel_tn", threshold)] = pixel.get("tn", nan)
        for key in ("precision50", "recall50", "f1_50", "mean_matched_iou"):
            row[instance_column(key, method)] = instances.get(key, nan)
        row[f"Objects in truth [{method}]"] = instances.get("n_truth", nan)
        row[f"Objects predicted [{method}]"] = instances.get("n_predicted", nan)
        for key in ("v_rand", "v_info"):
            row[f"{METRIC_NAMES[key]} [{method}]"] = restricted.get(key, nan)
        seconds = run_seconds(record, summary)
        row[RUN_TIME_COLUMN] = nan if seconds is None else seconds
        row["Started"] = format_time(record.started)
        row["Training finished"] = format_time(record.finished)
        extra_rows.append(row)
    return pd.concat([table, pd.DataFrame(extra_rows, index=table.index)], axis=1)


def machine_info() -> dict[str, Any]:
    """The machine a study runs on: CPU model, cores, torch version, GPU (or none)."""
    import platform

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                            "python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        info["torch"], info["gpu"] = "not installed", "unknown"
    return info


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line: ``CPU model, N cores, torch X, GPU: none``."""
    return (f"{info.get('cpu', 'unknown CPU')}, {info.get('cores', '?')} cores, torch {info.get('torch', '?')}, "
            f"GPU: {info.get('gpu', 'unknown')}")


__all__ = [
    "PAPER_EPOCHS_GUESS", "PRESETS", "PlannedRun", "RunState", "StudyDefinition", "StudyGrid", "StudyProgress",
    "budget_epochs", "check_study_name", "configs_for_grid", "decide_action", "estimate_eta", "follow", "grid_configs",
    "launch", "load_study", "machine_info", "parse_augmentations", "parse_budgets", "parse_init_from", "parse_fractions", "parse_roots",
    "parse_seeds", "plan_study",
    "preset_settings",
    "run_identity", "save_study", "study_names", "study_progress", "study_records", "study_table", "validate_grid",
]
