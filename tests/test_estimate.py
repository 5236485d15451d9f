"""Tests of core.estimate: a run's time from the throughput this machine measured."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.config import RunConfig
from core.estimate import estimate_grid, estimate_run, samples_from_registry
from core.runs import RunRecord


def record(run_id: str, seconds: float, **config) -> RunRecord:
    now = time.time()
    return RunRecord(id=run_id, config=RunConfig(**config), status="finished", created=now - seconds,
                     started=now - seconds, finished=now, error=None, pid=None,
                     checkpoint_dir=Path("/nonexistent"), study=None)


def epochs(n: int, pps: float, train: float, validation: float) -> list[dict]:
    return [{"epoch": 0, "val_f1": 0.1}] + [{"epoch": e, "patches_per_second": pps, "train_seconds": train,
                                            "epoch_seconds": train + validation} for e in range(1, n + 1)]


def test_an_exact_setting_uses_its_measured_speed():
    run = record("r1", seconds=100, epochs=4, base_width=8, patch_size=64, batch_size=2, steps_per_epoch=10)
    samples = samples_from_registry([run], {"r1": epochs(4, pps=20.0, train=1.0, validation=4.0)})
    assert samples[0].fixed_seconds == pytest.approx(100 - 4 * 5.0, abs=0.5)
    estimate = estimate_run(RunConfig(epochs=10, base_width=8, patch_size=64, batch_size=2, steps_per_epoch=10),
                            samples)
    # training 10 x 10 x 2 / 20 = 10 s, validation 10 x 4 s, fixed 80 s
    assert estimate.train_seconds == pytest.approx(10.0)
    assert estimate.validation_seconds == pytest.approx(40.0)
    assert estimate.seconds == pytest.approx(130.0, abs=0.5)
    assert "measured by 1 run(s) at width 8" in estimate.basis


def test_another_setting_is_scaled_by_the_work_per_patch_and_says_so():
    run = record("r1", seconds=50, epochs=2, base_width=8, patch_size=64, batch_size=2)
    samples = samples_from_registry([run], {"r1": epochs(2, pps=40.0, train=1.0, validation=1.0)})
    estimate = estimate_run(RunConfig(base_width=16, patch_size=128, batch_size=2, epochs=1, steps_per_epoch=10),
                            samples)
    assert estimate.patches_per_second == pytest.approx(40.0 / 16)  # 4x the pixels, 4x the width squared
    assert "scaled from run r1" in estimate.basis


def test_no_measurement_means_no_estimate_and_grids_add_up():
    assert not estimate_run(RunConfig(), []).known
    run = record("r1", seconds=10, epochs=1, base_width=8)
    samples = samples_from_registry([run], {"r1": epochs(1, pps=10.0, train=1.0, validation=1.0)})
    grid = estimate_grid([RunConfig(base_width=8, epochs=1)] * 4, samples, parallel=2)
    assert grid.known and grid.wall_seconds == pytest.approx(grid.run_seconds / 2)
