"""The run registry: life cycle, dead-process detection, per-epoch rows, evaluations."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from core.config import ConfigError, RunConfig
from core.errors import DatasetError, RunError
from core.runs import Registry, new_run_id, process_alive, process_start_time, valid_run_id


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry.sqlite")


def test_database_uses_wal_mode(registry):
    mode = sqlite3.connect(registry.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_life_cycle_and_refused_transitions(registry):
    run_id = registry.create_run(RunConfig(epochs=2))
    assert registry.get_run(run_id).status == "queued"
    with pytest.raises(RunError, match="cannot become finished"):
        registry.set_status(run_id, "finished")
    registry.set_status(run_id, "running", pid=1234)
    record = registry.get_run(run_id)
    assert record.status == "running" and record.pid == 1234 and record.started is not None
    registry.set_status(run_id, "finished")
    assert registry.get_run(run_id).finished is not None
    with pytest.raises(RunError, match="cannot become running"):
        registry.set_status(run_id, "running")


def test_evaluating_sits_between_running_and_finished(registry):
    run_id = registry.create_run(RunConfig(epochs=2))
    with pytest.raises(RunError, match="cannot become evaluating"):
        registry.set_status(run_id, "evaluating")  # not before training
    registry.set_status(run_id, "running", pid=os.getpid())
    registry.set_status(run_id, "evaluating")
    record = registry.get_run(run_id)
    assert record.status == "evaluating" and record.active and record.pid == os.getpid()
    for refused in ("queued", "running"):
        with pytest.raises(RunError, match=f"cannot become {refused}"):
            registry.set_status(run_id, refused)
    registry.set_status(run_id, "finished")
    assert registry.get_run(run_id).status == "finished" and not registry.get_run(run_id).active


def test_status_changes_are_compare_and_set(registry):
    run_id = registry.create_run(RunConfig())
    read = registry.get_run(run_id).status  # this caller read "queued"...
    assert registry.transition(run_id, "queued", "cancelled", error="cancelled before it started")  # ...another won
    assert not registry.transition(run_id, read, "running", pid=os.getpid())  # the stale write changes nothing
    record = registry.get_run(run_id)
    assert record.status == "cancelled" and record.pid is None
    # With an owner: only the process that owns the run can end it.
    registry.set_status(run_id, "running", pid=os.getpid())
    assert not registry.transition(run_id, "running", "finished", owner=os.getpid() + 1)
    assert registry.end_attempt(run_id, "failed", error="boom")  # this process owns it
    assert registry.get_run(run_id).status == "failed"
    assert not registry.end_attempt(run_id, "failed", error="again")  # no longer running


def test_set_status_reports_a_lost_race(registry, monkeypatch):
    run_id = registry.create_run(RunConfig())
    real_transition = registry.transition

    def cancel_first(*args, **kwargs):  # another process cancels between set_status's read and write
        real_transition(run_id, "queued", "cancelled")
        return real_transition(*args, **kwargs)

    monkeypatch.setattr(registry, "transition", cancel_first)
    with pytest.raises(RunError, match=f"run {run_id} changed from queued to cancelled"):
        registry.set_status(run_id, "running")
    assert registry.get_run(run_id).status == "cancelled"


def test_claim_refuses_a_run_a_live_process_owns(registry):
    run_id = registry.create_run(RunConfig())
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        registry.transition(run_id, "queued", "running", pid=sleeper.pid,
                            pid_start=process_start_time(sleeper.pid))
        with pytest.raises(RunError, match=f"run {run_id} is already running in process {sleeper.pid}"):
            registry.claim(run_id)
        sleeper.kill()
        sleeper.wait()
        record = registry.claim(run_id)  # its owner is gone: reaped, then claimed
        assert record.status == "running" and record.pid == os.getpid()
        assert record.pid_start == process_start_time(os.getpid())
    finally:
        sleeper.kill()
        sleeper.wait()


def test_process_identity_is_pid_and_start_time():
    start = process_start_time(os.getpid())
    assert isinstance(start, int) and start > 0
    assert process_alive(os.getpid(), start) and process_alive(os.getpid())
    assert not process_alive(os.getpid(), start + 1)  # same pid, another process
    assert not process_alive(None) and not process_alive(0)


def test_run_ids_are_plain_file_names(registry):
    with pytest.raises(ConfigError, match="not a path"):
        registry.create_run(RunConfig(dataset="x/../../../tmp/escape"))
    with pytest.raises(DatasetError, match="unknown dataset 'no-such-set'"):
        registry.create_run(RunConfig(dataset="no-such-set"))
    with pytest.raises(RunError, match="not allowed"):
        registry.create_run(RunConfig(), run_id="../../escape")
    # Even a config that skipped validation cannot put a path into an id.
    run_id = new_run_id(RunConfig(dataset="x/../../../tmp/escape"))
    assert valid_run_id(run_id) and "/" not in run_id
    assert not valid_run_id("..") and not valid_run_id("a/b") and not valid_run_id("")
    assert registry.list_runs() == []


def test_config_round_trips_and_is_validated(registry):
    config = RunConfig(dataset="isbi2012", root="/data/isbi", train_fraction=0.1, augmentation="heavy", seed=3)
    run_id = registry.create_run(config)
    assert registry.get_run(run_id).config == config
    with pytest.raises(ConfigError, match="train_fraction"):
        registry.create_run(RunConfig(train_fraction=0.0))
    with pytest.raises(ConfigError, match="train_fraction"):
        registry.create_run(RunConfig(train_fraction=0.9))


def test_unknown_run_is_a_clear_error(registry):
    with pytest.raises(RunError, match="no run with id 'nope'"):
        registry.get_run("nope")


def test_killed_process_is_marked_failed(registry):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    run_id = registry.create_run(RunConfig())
    registry.set_status(run_id, "running", pid=sleeper.pid)
    assert registry.reap_dead() == []  # alive: left alone
    sleeper.kill()
    sleeper.wait()
    assert not process_alive(sleeper.pid)
    assert registry.reap_dead() == [run_id]
    record = registry.get_run(run_id)
    assert record.status == "failed" and f"pid {sleeper.pid}" in record.error
    registry.set_status(run_id, "queued")  # a failed run can be resumed
    assert registry.get_run(run_id).status == "queued"


def test_epochs_are_replaced_on_resume(registry):
    run_id = registry.create_run(RunConfig())
    for epoch in range(4):
        registry.add_epoch(run_id, epoch, {"val_f1": epoch / 10})
    registry.truncate_epochs(run_id, after_epoch=1)
    registry.add_epoch(run_id, 2, {"val_f1": 0.9})
    assert [(row["epoch"], row["val_f1"]) for row in registry.epochs(run_id)] == [(0, 0.0), (1, 0.1), (2, 0.9)]


def test_evaluation_summary_and_arrays(registry):
    run_id = registry.create_run(RunConfig())
    assert registry.get_evaluation(run_id) is None and registry.evaluation_arrays(run_id) == {}
    curve = np.linspace(0, 1, 5)
    registry.save_evaluation(run_id, "val", {"f1": 0.8}, {"fpr": curve})
    registry.save_evaluation(run_id, "val", {"f1": 0.9}, {"fpr": curve * 2})
    assert registry.get_evaluation(run_id, "val") == {"f1": 0.9}
    np.testing.assert_array_equal(registry.evaluation_arrays(run_id, "val")["fpr"], curve * 2)


def test_filters_and_delete(registry):
    first = registry.create_run(RunConfig(dataset="synthetic-nuclei", study="s1"))
    second = registry.create_run(RunConfig(dataset="synthetic-membranes"))
    assert [r.id for r in registry.list_runs(dataset="synthetic-membranes")] == [second]
    assert [r.id for r in registry.list_runs(study="s1")] == [first]
    registry.set_status(first, "running", pid=1)
    with pytest.raises(RunError, match="cancel it before deleting"):
        registry.delete_run(first)
    registry.delete_run(second)
    assert [r.id for r in registry.list_runs()] == [first]


def test_runs_list_says_when_a_filter_matches_nothing(capsys):
    from core.cli import main

    assert main(["runs", "list"]) == 0
    assert "no runs yet" in capsys.readouterr().out
    Registry().create_run(RunConfig())
    assert main(["runs", "list", "--status", "failed"]) == 0
    out = capsys.readouterr().out
    assert "no run matches status failed" in out and "holds 1 run" in out
