"""A registry that is damaged, old, or odd: clear errors, ``runs check``, migration, and
the command line's last-resort handling of bugs and closed pipes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from core.config import RunConfig
from core.errors import RegistryError, RunError
from core.paths import PROJECT_ROOT, cache_dir
from core.runs import Registry, RegistryCheck

# The schema of the first release (no pid_start, no cancel_requested columns).
OLD_SCHEMA = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, config TEXT NOT NULL, dataset TEXT NOT NULL, study TEXT, status TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, error TEXT, pid INTEGER,
    checkpoint_dir TEXT NOT NULL, progress TEXT, heartbeat REAL
);
CREATE INDEX runs_by_study ON runs(study);
CREATE TABLE epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (run_id, epoch)
);
CREATE TABLE evaluations (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, split TEXT NOT NULL, summary TEXT NOT NULL,
    arrays_path TEXT, created REAL NOT NULL, PRIMARY KEY (run_id, split)
);
"""


def core_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, **kwargs)


def insert_run(db: sqlite3.Connection, run_id: str, status: str, config: str | None = None, **columns) -> None:
    values = {"id": run_id, "config": config or RunConfig().to_json(), "dataset": "synthetic-nuclei",
              "status": status, "created": time.time(), "checkpoint_dir": str(cache_dir() / "nowhere" / run_id),
              **columns}
    db.execute(f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
               list(values.values()))


# ---- damaged files ------------------------------------------------------------------------------


def test_garbage_registry_is_a_clear_error():
    path = cache_dir() / "registry.sqlite"
    path.write_bytes(os.urandom(40_000))
    with pytest.raises(RegistryError) as caught:
        Registry(path)
    message = str(caught.value)
    assert str(path) in message and "damaged" in message and "move it aside" in message
    assert "a new registry is created on the next start" in message
    assert isinstance(caught.value, RunError)  # callers catching RunError see it too

    listing = core_cli("runs", "list")
    assert listing.returncode == 2 and "Traceback" not in listing.stderr
    assert listing.stderr.strip().splitlines() == [f"error: {message}"]
    check = core_cli("runs", "check")
    assert check.returncode == 2 and check.stdout.strip().splitlines()[-1].startswith(f"registry {path}: damaged")


def test_truncated_registry_is_a_clear_error():
    registry = Registry()
    for seed in range(300):  # enough rows for the file to span many pages
        run_id = registry.create_run(RunConfig(seed=seed, notes="x" * 200))
        registry.add_epoch(run_id, 0, {"val_f1": 0.5})
    with registry._connect() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file
    data = registry.path.read_bytes()
    registry.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RegistryError, match="is damaged"):
        Registry(registry.path).list_runs()
    report = Registry.check(registry.path)
    assert not report.ok and "damaged" in report.verdict()


def test_unwritable_registry_folder_is_a_clear_error(tmp_path):
    (tmp_path / "folder.sqlite").mkdir()  # a folder where the file should be
    with pytest.raises(RegistryError, match="cannot be opened"):
        Registry(tmp_path / "folder.sqlite")


# ---- runs check ----------------------------------------------------------------------------------


def test_runs_check_on_a_sound_registry():
    registry = Registry()
    registry.create_run(RunConfig())
    result = core_cli("runs", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"registry {registry.path}: ok (1 run)"


def test_runs_check_finds_bad_rows_and_missing_checkpoints():
    registry = Registry()
    healthy = registry.create_run(RunConfig())
    with registry._connect() as db:
        insert_run(db, "bad-config", "failed", config="{not json")
        insert_run(db, "finished-without-files", "finished")
        insert_run(db, "trained-without-last", "failed")
        db.execute("INSERT INTO epochs (run_id, epoch, metrics, created) VALUES ('trained-without-last', 1, '{}', 0)")
    # One damaged row does not hide the others, and asking for it names it.
    listed = [run.id for run in registry.list_runs()]
    assert healthy in listed and "bad-config" not in listed
    with pytest.raises(RegistryError, match="run bad-config .* has a damaged config"):
        registry.get_run("bad-config")

    report = Registry.check(registry.path)
    assert [run_id for run_id, _ in report.bad_configs] == ["bad-config"]
    assert sorted(run_id for run_id, _ in report.missing_checkpoints) == ["finished-without-files",
                                                                          "trained-without-last"]
    result = core_cli("runs", "check")
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert any("bad-config" in line for line in lines[:-1])
    assert lines[-1] == (f"registry {registry.path}: damaged: 1 run(s) with an unreadable config; "
                         "2 run(s) missing checkpoints (of 4 runs)")
    registry.delete_run("bad-config")  # a damaged row can be removed
    assert [run_id for run_id, _ in Registry.check(registry.path).bad_configs] == []


def test_runs_check_without_a_registry(tmp_path):
    report = Registry.check(tmp_path / "none.sqlite")
    assert report.ok and isinstance(report, RegistryCheck) and not (tmp_path / "none.sqlite").exists()


# ---- an old registry keeps working ------------------------------------------------------------------


def test_a_registry_made_by_the_old_code_is_upgraded_in_place():
    path = cache_dir() / "registry.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    insert_run(db, "old-finished", "finished", pid=12345)
    insert_run(db, "old-running", "running", pid=2 ** 22 + 4321)  # its process is long gone
    insert_run(db, "old-queued", "queued")
    db.commit()
    db.close()

    registry = Registry(path)
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(runs)")}
    assert {"pid_start", "cancel_requested"} <= columns
    assert {run.id: run.status for run in registry.list_runs()} == {
        "old-finished": "finished", "old-running": "running", "old-queued": "queued"}
    assert registry.get_run("old-finished").pid_start is None
    assert registry.reap_dead() == ["old-running"]
    registry.set_status("old-queued", "cancelled")
    Registry(path)  # opening it again adds nothing twice
    assert registry.get_run("old-queued").status == "cancelled"


# ---- the command line's last resort -----------------------------------------------------------------


def test_an_unexpected_error_is_one_line_with_a_log(monkeypatch, capsys):
    import core.commands.runs as runs_commands
    from core.cli import main

    def broken(args):
        raise ZeroDivisionError("division by zero in the listing")

    monkeypatch.setattr(runs_commands, "list_runs", broken)
    assert main(["runs", "list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bug" in err[0] and "ZeroDivisionError" in err[0], err
    log = err[0].rsplit("the traceback is in ", 1)[1]
    assert log.startswith(str(cache_dir() / "logs")) and "Traceback" in open(log).read()


def test_a_closed_pipe_ends_quietly():
    registry = Registry()
    with registry._connect() as db:  # enough runs to fill the pipe: `runs list` keeps writing
        for index in range(3000):
            insert_run(db, f"run-{index:05d}", "queued", created=index)
    result = subprocess.run(f"{sys.executable} -m core runs list | head -n 1", shell=True, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("run id"), result.stdout[:200]
    assert result.stderr == ""


def test_runs_list_json_has_the_new_fields():
    registry = Registry()
    registry.create_run(RunConfig())
    result = core_cli("runs", "list", "--json", "--status", "queued")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["status"] == "queued" and "pid_start" in rows[0] and "cancel_requested" in rows[0]
