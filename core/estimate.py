"""How long a run (or a grid of runs) will take on this machine, before it is launched.

Every epoch a run trains stores what it measured (``Registry.epochs``): ``patches_per_second``
(training throughput), ``train_seconds`` and ``epoch_seconds`` (training + validation). A new
run's time is estimated from the runs this machine's queue already trained:

- training: ``epochs x steps_per_epoch x batch_size / patches per second``, the patches per
  second measured at the same model width, depth, patch size and batch size (the median over
  those epochs); without such a run, scaled from the nearest measured setting by the work per
  patch, ``patch_size² x width²`` (a U-Net's convolutions cost grows with both), and said so;
- validation: the seconds per epoch beyond training, measured on the same data and width;
- the fixed part of a run (starting the process, loading the data, validating the untrained
  model, the final evaluation): the median of ``run time - sum of epoch times`` over past runs.

The estimate says which runs and how many epochs it is based on, so a user can judge it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from core.config import RunConfig


@dataclass(frozen=True)
class Sample:
    """What one trained run measured: its settings and the medians over its epochs."""

    run_id: str
    dataset: str
    root: str | None
    image_size: int | None
    base_width: int
    depth: int
    patch_size: int
    batch_size: int
    patches_per_second: float
    validation_seconds: float  # per epoch: epoch_seconds - train_seconds
    fixed_seconds: float | None  # run time - the sum of its epoch times; None when unknown
    epochs: int

    def work_per_patch(self) -> float:
        return float(self.patch_size) ** 2 * float(self.base_width) ** 2


@dataclass(frozen=True)
class Estimate:
    """The estimated seconds of one run, split into its parts, and what they are based on."""

    seconds: float | None  # None: nothing measured on this machine yet
    train_seconds: float | None
    validation_seconds: float | None
    fixed_seconds: float | None
    patches_per_second: float | None
    basis: str  # a sentence: which measurements, exact or scaled

    @property
    def known(self) -> bool:
        return self.seconds is not None and math.isfinite(self.seconds)


def samples_from_registry(records: Sequence[Any], epochs_by_run: Mapping[str, Sequence[Mapping[str, Any]]]
                          ) -> list[Sample]:
    """One :class:`Sample` per run with at least one trained epoch that stored its throughput.

    Runs trained through Ray on other machines are left out: their speed is not this machine's.
    """
    samples = []
    for record in records:
        if getattr(record, "executor", None) == "ray":
            continue
        epochs = [e for e in epochs_by_run.get(record.id, []) if e.get("epoch", 0) >= 1
                  and e.get("patches_per_second") and e.get("train_seconds") is not None]
        if not epochs:
            continue
        config: RunConfig = record.config
        pps = statistics.median(float(e["patches_per_second"]) for e in epochs)
        validation = statistics.median(max(0.0, float(e.get("epoch_seconds", e["train_seconds"]))
                                           - float(e["train_seconds"])) for e in epochs)
        fixed = None
        if record.status == "finished" and record.started and record.finished:
            fixed = max(0.0, (record.finished - record.started) - sum(float(e.get("epoch_seconds", 0)) for e in epochs))
        samples.append(Sample(record.id, config.dataset, config.root, config.image_size, config.base_width,
                              config.depth, config.patch_size, config.batch_size, pps, validation, fixed,
                              len(epochs)))
    return samples


def _same_model(sample: Sample, config: RunConfig) -> bool:
    return (sample.base_width, sample.depth, sample.patch_size, sample.batch_size) == (
        config.base_width, config.depth, config.patch_size, config.batch_size)


def _same_data(sample: Sample, config: RunConfig) -> bool:
    return (sample.dataset, sample.root, sample.image_size) == (config.dataset, config.root, config.image_size)


def estimate_run(config: RunConfig, samples: Sequence[Sample]) -> Estimate:
    """The estimated time of one run of ``config`` from this machine's measurements (see the module)."""
    if not samples:
        return Estimate(None, None, None, None, None,
                        "no run has trained on this machine yet: the first run measures the speed")
    exact = [s for s in samples if _same_model(s, config)]
    work = float(config.patch_size) ** 2 * float(config.base_width) ** 2
    if exact:
        pps = statistics.median(s.patches_per_second for s in exact)
        basis = (f"training speed measured by {len(exact)} run(s) at width {config.base_width}, depth {config.depth}, "
                 f"patch {config.patch_size}, batch {config.batch_size}: {pps:,.1f} patches/s")
    else:
        nearest = min(samples, key=lambda s: (abs(math.log(s.work_per_patch() / work)),
                                              s.depth != config.depth, s.batch_size != config.batch_size))
        pps = nearest.patches_per_second * nearest.work_per_patch() / work
        basis = (f"training speed scaled from run {nearest.run_id} (width {nearest.base_width}, depth {nearest.depth}, "
                 f"patch {nearest.patch_size}, batch {nearest.batch_size}: {nearest.patches_per_second:,.1f} "
                 f"patches/s) by patch² x width²: about {pps:,.1f} patches/s; no run measured this exact setting, "
                 "so expect an error of a factor 2")
    train = config.epochs * config.steps_per_epoch * config.batch_size / pps
    same_data = [s for s in samples if _same_data(s, config)]
    data_width = [s for s in same_data if s.base_width == config.base_width and s.depth == config.depth]
    if data_width:
        validation = statistics.median(s.validation_seconds for s in data_width)
    elif same_data:  # validation is a forward pass over the same images: scale by width²
        validation = statistics.median(s.validation_seconds * (config.base_width / s.base_width) ** 2
                                       for s in same_data)
    else:
        validation = statistics.median(s.validation_seconds for s in samples)
        basis += "; validation time from runs on other data"
    fixed_values = [s.fixed_seconds for s in (same_data or samples) if s.fixed_seconds is not None]
    fixed = statistics.median(fixed_values) if fixed_values else 0.0
    total = train + config.epochs * validation + fixed
    return Estimate(total, train, config.epochs * validation, fixed, pps, basis)


@dataclass(frozen=True)
class GridEstimate:
    """The estimate of several runs trained ``parallel`` at a time."""

    runs: tuple[Estimate, ...]
    parallel: int

    @property
    def known(self) -> bool:
        return bool(self.runs) and all(run.known for run in self.runs)

    @property
    def run_seconds(self) -> float:
        """The sum of the runs' times (one after another)."""
        return float(sum(run.seconds for run in self.runs if run.known))

    @property
    def wall_seconds(self) -> float:
        """Wall time: runs trained ``parallel`` at a time, assumed not to slow each other (true
        for one run per GPU; on a CPU one run at a time is the default)."""
        return self.run_seconds / max(1, self.parallel)


def estimate_grid(configs: Sequence[RunConfig], samples: Sequence[Sample], parallel: int = 1) -> GridEstimate:
    """Every run's estimate and their total (see :class:`GridEstimate`)."""
    return GridEstimate(tuple(estimate_run(config, samples) for config in configs), max(1, int(parallel)))
