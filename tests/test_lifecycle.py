"""A run's life cycle: queued -> running -> evaluating -> finished | failed | cancelled.

Races between the worker, ``cancel`` and a second ``train --resume`` are made
deterministic by running the worker in this process and cancelling from inside the
registry calls it makes; process identity (pid and start time) is tested with ``sleep``
processes standing in for training processes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import core.lifecycle as lifecycle
import core.queue as queue
from core.checkpoints import load_checkpoint
from core.config import RunConfig
from core.errors import DiskFullError, RunError
from core.lifecycle import train_then_evaluate
from core.paths import PROJECT_ROOT
from core.queue import cancel, enqueue, run_worker
from core.runs import Registry, process_alive, process_start_time
from core.train import train_run

# Small enough for a few seconds per run on two CPU cores (as in test_train.py).
TINY = dict(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="light", steps_per_epoch=4,
            batch_size=4, patch_size=64, base_width=8, depth=3, tile_size=256, threads=2)


@pytest.fixture
def sleeper():
    """A live process that is not a training process (stands in for a reused pid)."""
    process = subprocess.Popen(["sleep", "120"])
    yield process
    process.kill()
    process.wait()


def own(registry: Registry, run_id: str, pid: int, pid_start: int | None) -> None:
    """Make process ``pid`` (started at ``pid_start``) the owner of a queued run, as a claim does."""
    assert registry.transition(run_id, "queued", "running", pid=pid, pid_start=pid_start)


# ---- the evaluation phase -------------------------------------------------------------------


def test_training_then_evaluation_walks_through_evaluating(monkeypatch):
    registry = Registry()
    seen = []
    real_evaluate = lifecycle.evaluate_run

    def spy(run_id, **kwargs):
        seen.append(registry.get_run(run_id).status)
        return real_evaluate(run_id, **kwargs)

    monkeypatch.setattr(lifecycle, "evaluate_run", spy)
    outcome = train_then_evaluate(RunConfig(**TINY, epochs=1), show_progress=False)
    assert seen == ["evaluating"]  # the stored status says what the run is doing
    record = registry.get_run(outcome.result.run_id)
    assert outcome.status == "finished" and record.status == "finished"
    assert record.best_checkpoint.is_file() and registry.get_evaluation(record.id, "val") is not None
    summary = outcome.summary()
    assert {"run_id", "status", "epochs_done", "best_epoch", "validation", "evaluation"} <= set(summary)
    assert record.progress["phase"] == "evaluated"


def test_no_evaluate_goes_from_running_to_finished():
    registry = Registry()
    outcome = train_then_evaluate(RunConfig(**TINY, epochs=1), evaluate=False, show_progress=False)
    assert outcome.status == "finished" and "evaluation" not in outcome.summary()
    assert registry.get_run(outcome.result.run_id).status == "finished"
    assert registry.get_evaluation(outcome.result.run_id, "val") is None


def test_death_while_evaluating_is_reaped_and_resume_only_evaluates():
    registry = Registry()
    result = train_run(RunConfig(**TINY, epochs=2), show_progress=False, then_evaluate=True)
    run_id = result.run_id
    assert registry.get_run(run_id).status == "evaluating"
    gone = subprocess.Popen(["true"])  # the evaluating process dies: its pid is free now
    gone.wait()
    with registry._connect() as db:
        db.execute("UPDATE runs SET pid=?, pid_start=NULL WHERE id=?", (gone.pid, run_id))
    assert registry.reap_dead() == [run_id]
    record = registry.get_run(run_id)
    assert record.status == "failed" and "while evaluating" in record.error and f"pid {gone.pid}" in record.error
    epochs = registry.epochs(run_id)

    outcome = train_then_evaluate(run_id=run_id, show_progress=False)  # last.pt is at the final epoch
    assert outcome.status == "finished" and outcome.result.history == [] and outcome.result.epochs_done == 2
    assert registry.epochs(run_id) == epochs  # no epoch trained again
    assert registry.get_run(run_id).status == "finished" and registry.get_evaluation(run_id, "val")


def test_an_evaluation_error_fails_the_run_with_its_cause(monkeypatch):
    def broken(run_id, **kwargs):
        raise RuntimeError("out of cheese")

    monkeypatch.setattr(lifecycle, "evaluate_run", broken)
    with pytest.raises(RuntimeError, match="out of cheese"):
        train_then_evaluate(RunConfig(**TINY, epochs=1), show_progress=False)
    record = Registry().list_runs()[0]
    assert record.status == "failed"
    assert record.error.startswith("evaluation failed: RuntimeError: out of cheese")


def test_sigterm_while_evaluating_cancels_cleanly(monkeypatch):
    def slow(run_id, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # `cancel` arrives mid-evaluation
        time.sleep(5)
        pytest.fail("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(lifecycle, "evaluate_run", slow)
    outcome = train_then_evaluate(RunConfig(**TINY, epochs=1), show_progress=False)
    record = Registry().get_run(outcome.result.run_id)
    assert outcome.status == "cancelled" and record.status == "cancelled"
    assert "while evaluating" in record.error


def test_a_run_is_never_finished_without_best_pt():
    registry = Registry()
    result = train_run(RunConfig(**TINY, epochs=1), show_progress=False)
    registry.set_status(result.run_id, "queued")  # queued again (e.g. to re-evaluate it)...
    Path(result.checkpoint_dir, "best.pt").unlink()  # ...but its best.pt is gone
    with pytest.raises(RunError, match="without a best checkpoint"):
        train_run(run_id=result.run_id, show_progress=False)
    record = registry.get_run(result.run_id)
    assert record.status == "failed" and "best.pt does not exist" in record.error


# ---- failures keep their cause ---------------------------------------------------------------


def test_a_failure_mid_run_is_recorded_with_its_cause(monkeypatch):
    real_add_epoch = Registry.add_epoch

    def failing(self, run_id, epoch, metrics):
        if epoch == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_add_epoch(self, run_id, epoch, metrics)

    monkeypatch.setattr(Registry, "add_epoch", failing)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train_run(RunConfig(**TINY, epochs=3), show_progress=False)
    record = Registry().list_runs()[0]
    assert record.status == "failed"
    assert record.error.splitlines()[0] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in record.error  # a bug's traceback is kept for the report


def test_disk_full_fails_the_run_keeps_last_pt_and_resume_finishes(monkeypatch):
    config = RunConfig(**TINY, epochs=3)
    uninterrupted = train_run(config, show_progress=False)
    real_save = torch.save
    disk_full = True

    def full_disk(obj, f, *args, **kwargs):
        if disk_full and isinstance(obj, dict) and obj.get("epoch") == 2:
            Path(f).write_bytes(b"half a checkpoint")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError, match="is full"):
        train_run(config, show_progress=False)
    registry = Registry()
    record = registry.list_runs()[0]
    assert record.id != uninterrupted.run_id
    assert record.status == "failed" and record.error.startswith("disk full: ")
    assert "ended without finishing" not in record.error
    assert load_checkpoint(record.last_checkpoint)["epoch"] == 1  # the previous epoch, intact
    assert sorted(path.name for path in record.checkpoint_dir.iterdir()) == ["best.pt", "last.pt"]  # no temp file
    assert [row["epoch"] for row in registry.epochs(record.id)] == [0, 1]

    disk_full = False  # space was freed
    resumed = train_run(run_id=record.id, show_progress=False)
    assert resumed.status == "finished" and registry.get_run(record.id).status == "finished"
    for key in ("val_loss", "val_f1", "train_loss"):
        assert resumed.final_metrics[key] == pytest.approx(uninterrupted.final_metrics[key], abs=1e-6), key


def test_disk_full_on_a_real_small_filesystem(tmp_path, monkeypatch):
    """A tmpfs with room for two checkpoints: the third write (epoch 2's last.pt) fails."""
    probe = train_run(RunConfig(**TINY, epochs=1), show_progress=False, registry=Registry(tmp_path / "probe.sqlite"))
    size = Path(probe.checkpoint_dir, "last.pt").stat().st_size
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 2.5)}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        monkeypatch.setenv("UNETLAB_CHECKPOINTS", str(mount_point))
        registry = Registry()  # the registry itself stays on the roomy disk
        with pytest.raises(DiskFullError):
            train_run(RunConfig(**TINY, epochs=3), show_progress=False, registry=registry)
        record = registry.list_runs()[0]
        assert record.status == "failed" and record.error.startswith("disk full: ")
        assert load_checkpoint(record.last_checkpoint)["epoch"] == 1
        assert not [path for path in record.checkpoint_dir.iterdir() if path.name.startswith(".")]
        subprocess.run(["mount", "-o", f"remount,size={size * 10}", str(mount_point)], check=True)  # room again
        resumed = train_run(run_id=record.id, show_progress=False, registry=registry)
        assert resumed.status == "finished" and registry.get_run(record.id).status == "finished"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


# ---- compare-and-set: cancel versus the worker --------------------------------------------------


def test_cancel_between_reading_the_queue_and_claiming_wins(monkeypatch):
    registry = Registry()
    run_id = enqueue([RunConfig(**TINY, epochs=1)], registry, start_worker=False)[0]
    real_list_runs = registry.list_runs
    cancelled = []

    def list_then_cancel(status=None, **kwargs):
        runs = real_list_runs(status=status, **kwargs)
        if status == "queued" and not cancelled and any(run.id == run_id for run in runs):
            cancelled.append(cancel(run_id, registry))  # lands after the read, before the claim
        return runs

    spawned = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(registry, "list_runs", list_then_cancel)
    monkeypatch.setattr(queue.subprocess, "Popen", lambda *a, **k: spawned.append(a) or real_popen(*a, **k))
    assert run_worker(registry, idle_exit_seconds=0.2, poll_seconds=0.05) == 0
    assert cancelled == ["cancelled"] and spawned == []  # no training process was started
    record = registry.get_run(run_id)
    assert record.status == "cancelled" and record.error == "cancelled before it started" and record.pid is None
    assert registry.epochs(run_id) == [] and not record.checkpoint_dir.exists()


def test_cancel_while_the_worker_starts_the_process_wins(monkeypatch):
    registry = Registry()
    run_id = enqueue([RunConfig(**TINY, epochs=1)], registry, start_worker=False)[0]
    real_popen = subprocess.Popen
    children = []

    def start_then_cancel(*args, **kwargs):
        child = real_popen(*args, **kwargs)
        children.append(child)
        record = registry.get_run(run_id)
        assert record.status == "running" and record.pid is None  # claimed, owner not yet recorded
        assert cancel(run_id, registry) == "cancelled"
        return child

    monkeypatch.setattr(queue.subprocess, "Popen", start_then_cancel)
    run_worker(registry, idle_exit_seconds=0.2, poll_seconds=0.05)  # returns once its child has ended
    assert len(children) == 1 and children[0].returncode == 2  # the child refused the run
    log = (registry.path.with_name("logs") / f"{run_id}.log").read_text()
    assert "the worker's claim on it is gone" in log and "Traceback" not in log
    record = registry.get_run(run_id)
    assert record.status == "cancelled" and record.error == "cancelled before it started"
    assert registry.epochs(run_id) == [] and not record.checkpoint_dir.exists()


def test_cancel_after_the_process_is_recorded_still_wins(monkeypatch):
    registry = Registry()
    run_id = enqueue([RunConfig(**TINY, epochs=1)], registry, start_worker=False)[0]
    real_transition = registry.transition
    answers = []

    def transition_then_cancel(run, expected, status, **kwargs):
        changed = real_transition(run, expected, status, **kwargs)
        if expected == status == "running" and changed:  # the worker just recorded the child's pid
            answers.append(cancel(run_id, registry))
        return changed

    monkeypatch.setattr(registry, "transition", transition_then_cancel)
    run_worker(registry, idle_exit_seconds=0.2, poll_seconds=0.05)
    assert answers == ["cancelling"]
    record = registry.get_run(run_id)
    assert record.status == "cancelled" and record.cancel_requested is not None
    assert registry.epochs(run_id) == []


# ---- a second training process ---------------------------------------------------------------


def test_second_train_resume_of_a_live_run_is_refused(sleeper):
    registry = Registry()
    run_id = registry.create_run(RunConfig(**TINY))
    own(registry, run_id, sleeper.pid, process_start_time(sleeper.pid))  # a live process trains it
    process = subprocess.run([sys.executable, "-m", "core", "train", "--resume", run_id, "--quiet", "--json"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in process.stderr, process.stderr
    assert run_id in lines[0] and f"process {sleeper.pid}" in lines[0] and "cancel it first" in lines[0]
    record = registry.get_run(run_id)
    assert record.status == "running" and record.pid == sleeper.pid  # untouched
    assert sleeper.poll() is None


# ---- process identity: pid and start time ----------------------------------------------------------


def test_a_reused_pid_is_dead_to_the_reaper_and_never_signalled(sleeper):
    registry = Registry()
    start = process_start_time(sleeper.pid)
    assert process_alive(sleeper.pid, start) and not process_alive(sleeper.pid, start - 7)
    # Two runs whose process crashed; the sleep now has their pid (with another start time).
    reaped, cancelled = (registry.create_run(RunConfig(**TINY)) for _ in range(2))
    own(registry, reaped, sleeper.pid, start - 7)
    own(registry, cancelled, sleeper.pid, start - 7)
    assert registry.reap_dead([reaped]) == [reaped]
    record = registry.get_run(reaped)
    assert record.status == "failed" and "now belongs to another process" in record.error
    assert cancel(cancelled, registry) == "failed"  # reaped, not signalled
    time.sleep(0.2)
    assert sleeper.poll() is None  # the unrelated process lives on

    # The same pid with its own start time is the run's process: cancel signals it.
    owned = registry.create_run(RunConfig(**TINY))
    own(registry, owned, sleeper.pid, start)
    assert registry.reap_dead() == []
    assert cancel(owned, registry) == "cancelling"
    assert sleeper.wait(timeout=10) == -signal.SIGTERM
    assert registry.reap_dead() == [owned]
    assert registry.get_run(owned).status == "cancelled"  # it died after a cancel was asked for


# ---- the worker goes on past runs it cannot start ------------------------------------------------


def test_a_run_that_cannot_start_never_blocks_the_queue(monkeypatch, tmp_path):
    registry = Registry()
    escape = "20240101-000000-x/../../../escape-abc123"  # queued by older code, dataset unchecked
    bad_config = RunConfig(**TINY).to_dict() | {"dataset": "x/../../../escape"}
    unknown = RunConfig(**TINY).to_dict() | {"dataset": "no-such-set"}
    with registry._connect() as db:
        for created, (run_id, config) in enumerate([(escape, bad_config), ("20240101-000001-unknown", unknown)]):
            db.execute("INSERT INTO runs (id, config, dataset, status, created, checkpoint_dir)"
                       " VALUES (?, ?, ?, 'queued', ?, ?)",
                       (run_id, RunConfig.from_dict(config).to_json(), config["dataset"], created, "/nowhere"))
    cannot_start, starts = enqueue([RunConfig(**TINY, seed=1), RunConfig(**TINY, seed=2)], registry,
                                   start_worker=False)

    def command(run_id: str) -> list[str]:
        if run_id == cannot_start:
            return [str(tmp_path / "no-such-python")]
        return [sys.executable, "-c", "print('crashed on start-up')"]  # exits without training

    monkeypatch.setattr(queue, "child_command", command)
    assert run_worker(registry, max_parallel=1, idle_exit_seconds=0.2, poll_seconds=0.05) == 1
    outcomes = {run_id: registry.get_run(run_id) for run_id in (escape, "20240101-000001-unknown",
                                                                cannot_start, starts)}
    assert all(record.status == "failed" for record in outcomes.values())
    assert "not a plain file name" in outcomes[escape].error
    assert "unknown dataset 'no-such-set'" in outcomes["20240101-000001-unknown"].error
    assert "could not start the training process" in outcomes[cannot_start].error
    assert "exited with status 0 before the run ended: crashed on start-up" in outcomes[starts].error
    assert not list(registry.path.parent.parent.rglob("escape-abc123*"))


def test_the_worker_records_why_its_own_process_ended_even_when_it_ends_between_two_polls(monkeypatch):
    # A child that exits after the worker polled it but before the worker looks for dead runs is
    # a zombie then; the worker must still record its exit status and last words, not a
    # generic "ended without finishing" (a race seen once in CI).
    registry = Registry()
    (run_id,) = enqueue([RunConfig(**TINY, seed=3)], registry, start_worker=False)
    monkeypatch.setattr(queue, "child_command", lambda run_id: [sys.executable, "-c", "print('said last')"])
    real_start_run = queue.start_run

    def start_run_whose_child_ends_unseen(*args):
        child = real_start_run(*args)
        child.wait()  # it has ended ...
        real_poll, first = child.poll, [True]

        def poll():  # ... but the worker's first poll still finds it running
            if first:
                first.clear()
                return None
            return real_poll()

        child.poll = poll
        return child

    monkeypatch.setattr(queue, "start_run", start_run_whose_child_ends_unseen)
    assert run_worker(registry, max_parallel=1, idle_exit_seconds=0.2, poll_seconds=0.05) == 1
    record = registry.get_run(run_id)
    assert record.status == "failed"
    assert "exited with status 0 before the run ended: said last" in record.error


# ---- command-line arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("args, setting", [
    (["--seed", "-1"], "seed"), (["--threads", "-1"], "threads"), (["--threads", "0"], "threads"),
    (["--epochs", "0"], "epochs"), (["--batch-size", "-2"], "batch_size"), (["--image-size", "-5"], "image_size"),
    (["--steps-per-epoch", "0"], "steps_per_epoch"), (["--dataset", "x/../../../tmp/escape"], "dataset"),
    (["--dataset", "no-such-set"], "unknown dataset"),
])
def test_bad_numbers_and_names_are_one_line_errors(args, setting, capsys):
    from core.cli import main

    assert main(["train", *args, "--quiet", "--no-evaluate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and setting in err[0], err
    assert Registry().list_runs() == []  # nothing was created
