"""The run registry: a SQLite database (WAL mode) under ``cache/``.

One row per run (config, status, times, owning process, checkpoint folder, live progress),
one row per finished epoch, one row per stored evaluation. Bulky arrays (curves,
sample predictions) live as ``.npz`` files beside the database and are referenced by path.

Several processes use it at once: each training process writes its own run's rows, the
worker claims queued runs, the app and the CLI read. Every call opens a short-lived
connection, so nothing is shared across processes or threads.

Life cycle::

    queued -> running -> evaluating -> finished
                 |            |
                 +------------+--> failed | cancelled  (both can be queued again: resumed)

``running`` trains, ``evaluating`` runs the stored evaluation of the trained model;
``--no-evaluate`` goes from ``running`` straight to ``finished``. A run is ``finished``
only when its ``best.pt`` exists (and, unless evaluation was skipped, its evaluation is
stored). A ``finished`` run can be queued again to re-evaluate it.

Every status change is a compare-and-set (``UPDATE ... WHERE id = ? AND status = ?``, with
the status the caller read, and the owning process where it matters): when two processes
race, one wins and the other learns it lost instead of silently overwriting.

A run's process is known by its pid *and* its start time (``/proc/<pid>/stat`` field 22),
so after a crash and pid reuse the reaper does not trust a stranger and ``cancel`` never
signals one. A ``running`` or ``evaluating`` run whose process has died is found by
:meth:`Registry.reap_dead` and marked failed (or cancelled, if a cancel was asked for).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from core.config import RunConfig
from core.errors import DiskFullError, RegistryError, RunError, UNetLabError
from core.fileio import is_disk_full
from core.paths import cache_dir, checkpoints_dir

STATUSES = ("queued", "running", "evaluating", "finished", "failed", "cancelled")
ACTIVE_STATUSES = ("running", "evaluating")  # a process owns the run
ENDED_STATUSES = ("finished", "failed", "cancelled")
ALLOWED_TRANSITIONS = {
    "queued": {"running", "cancelled", "failed"},
    # running -> running: the worker hands the run it claimed to the process it started.
    "running": {"running", "evaluating", "finished", "failed", "cancelled"},
    "evaluating": {"finished", "failed", "cancelled"},
    "failed": {"queued", "running"},
    "cancelled": {"queued", "running"},
    "finished": {"queued"},  # re-queued only to train further or re-evaluate
}

# Run ids become file names (checkpoint folders, worker logs): nothing that could leave a folder.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,200}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    dataset TEXT NOT NULL,
    study TEXT,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    pid INTEGER,
    checkpoint_dir TEXT NOT NULL,
    progress TEXT,
    heartbeat REAL,
    pid_start INTEGER,
    cancel_requested REAL,
    executor TEXT,
    node TEXT,
    device TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_study ON runs(study);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    split TEXT NOT NULL,
    summary TEXT NOT NULL,
    arrays_path TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, split)
);
"""

# Columns added after the first release: a registry made by older code gets them with ALTER TABLE.
ADDED_COLUMNS = {
    "pid_start": "INTEGER",  # start time of the owning process, clock ticks since boot
    "cancel_requested": "REAL",  # when `cancel` asked the owning process to stop
    # Where the current (or last) attempt trained: set by the process that trains it, cleared
    # when a new attempt starts. executor: "local" (this machine's queue or `train`) or "ray".
    "executor": "TEXT",
    "node": "TEXT",  # host name (and, on Ray, its IP and node id)
    "device": "TEXT",  # e.g. "cpu", "cuda (NVIDIA H100 80GB HBM3)"
}

# SQLite result codes (sqlite3.Error.sqlite_errorcode & 0xff) that say what went wrong.
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26

_ANY = object()  # "do not check the owning pid" in a compare-and-set


@dataclass
class RunRecord:
    """One row of the ``runs`` table, decoded."""

    id: str
    config: RunConfig
    status: str
    created: float
    started: float | None
    finished: float | None
    error: str | None
    pid: int | None
    checkpoint_dir: Path
    study: str | None
    progress: dict[str, Any] = field(default_factory=dict)
    heartbeat: float | None = None
    pid_start: int | None = None  # start time of process ``pid`` (clock ticks since boot), if known
    cancel_requested: float | None = None
    executor: str | None = None  # "local" or "ray": who trains (or trained) the current attempt
    node: str | None = None  # the machine it trained on
    device: str | None = None  # the device it trained on

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def active(self) -> bool:
        """True while a process owns the run (training or evaluating it)."""
        return self.status in ACTIVE_STATUSES

    def process_alive(self) -> bool:
        """True when the process that owns the run still exists (pid and start time match)."""
        return process_alive(self.pid, self.pid_start)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "study": self.study,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "cancel_requested": self.cancel_requested,
            "executor": self.executor,
            "node": self.node,
            "device": self.device,
            "checkpoint_dir": str(self.checkpoint_dir),
            "progress": self.progress,
            "config": self.config.to_dict(),
        }


#: The ``extra["method"]`` of a run that scored another tool's model (``unetlab evaluate-model``):
#: "external: NAME". Such a run has no checkpoints and is never trained.
EXTERNAL_PREFIX = "external: "


def is_external(config: RunConfig) -> bool:
    """True for a run that holds another tool's model's scores, not a run trained here."""
    return str((config.extra or {}).get("method", "")).startswith(EXTERNAL_PREFIX)


def valid_run_id(run_id: str) -> bool:
    """True when ``run_id`` is safe as a file name: only ``[A-Za-z0-9._-]``, not ``.`` or ``..``."""
    return bool(RUN_ID_PATTERN.fullmatch(run_id or "")) and run_id.strip(".") != ""


def check_run_id(run_id: str) -> str:
    """Return ``run_id``, or raise RunError if it could not safely name a folder or a file."""
    if not valid_run_id(run_id):
        raise RunError(f"run id {run_id!r} is not allowed: use only letters, digits, '.', '_' and '-' "
                       "(it names the run's checkpoint folder and log file)")
    return run_id


def check_config(config: RunConfig) -> RunConfig:
    """Validate a run's settings before any id or path is built from them.

    :meth:`RunConfig.validate` checks every value (the dataset must be a plain name); here
    the dataset must also be a registered one.

    Raises
    ------
    ConfigError, DatasetError
        Naming the bad setting (an unknown dataset lists the known ones).
    """
    from core.datasets.registry import get_spec  # imported here: loaders are heavy, the registry is not

    config.validate()
    get_spec(config.dataset)
    return config


def new_run_id(config: RunConfig) -> str:
    """A sortable, readable id: creation time, dataset and a random suffix.

    The dataset part keeps only ``[A-Za-z0-9._-]`` (anything else becomes ``-``), so the id
    is always a plain file name, whatever the config holds.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", str(config.dataset)).strip(".-")[:48] or "run"
    return check_run_id(f"{stamp}-{dataset}-{secrets.token_hex(3)}")


# ---- processes ---------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, or None without ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = data.rsplit(b")", 1)[1].split()
    try:
        return fields[0].decode(), int(fields[19])  # fields[0] is field 3 (state), [19] is field 22
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int | None) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None if unknown.

    Together with the pid it names one process for good: a pid reused after a crash has
    a different start time.
    """
    if not pid or pid <= 0:
        return None
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_alive(pid: int | None, start_time: int | None = None) -> bool:
    """True when process ``pid`` exists, is not a zombie and, if ``start_time`` is given,
    started at that time (so a reused pid does not count as the process we knew).

    Without ``/proc`` (macOS) only the pid can be checked.
    """
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state in ("Z", "X"):  # exited but not yet reaped by its parent: gone
        return False
    return start_time is None or started == start_time


def signal_process(pid: int | None, start_time: int | None, signum: int = signal.SIGTERM) -> bool:
    """Send ``signum`` to process ``pid`` only if it is still the process that started at
    ``start_time``; True if it was sent.

    On Linux the process is pinned with a pidfd before its start time is checked, so it
    cannot exit and have its pid reused between the check and the signal.
    """
    if not process_alive(pid, start_time):
        return False
    assert pid is not None
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfd (old kernel, macOS): check, then signal
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True
    try:
        if not process_alive(pid, start_time):
            return False
        signal.pidfd_send_signal(handle, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(handle)


def worker_lock_path(registry_path: str | Path) -> Path:
    """The ``flock`` file the queue worker of this registry holds while it runs."""
    return Path(registry_path).with_name("worker.lock")


def worker_lock_held(registry_path: str | Path) -> bool:
    """True when some process (possibly this one) holds the worker lock of this registry."""
    import fcntl

    with open(worker_lock_path(registry_path), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def failure_cause(error: BaseException) -> str:
    """The text stored in a failed run's ``error``: the cause on the first line.

    A full disk says so first; U-Net Lab's own errors are already clear sentences; any
    other exception keeps the end of its traceback for the bug report.
    """
    if isinstance(error, DiskFullError) or is_disk_full(error):
        return f"disk full: {error}"
    if isinstance(error, UNetLabError):
        return str(error)
    text = "".join(traceback.format_exception(error))
    return f"{type(error).__name__}: {error}\n{text[-2000:]}"


# ---- the registry --------------------------------------------------------------------------


@dataclass
class RegistryCheck:
    """What :meth:`Registry.check` found; ``ok`` when nothing is wrong."""

    path: Path
    runs: int = 0
    unreadable: str | None = None  # the registry could not be opened at all
    integrity: list[str] = field(default_factory=list)  # PRAGMA integrity_check complaints
    bad_configs: list[tuple[str, str]] = field(default_factory=list)  # (run id, why)
    missing_checkpoints: list[tuple[str, str]] = field(default_factory=list)  # (run id, what is missing)

    @property
    def ok(self) -> bool:
        return not (self.unreadable or self.integrity or self.bad_configs or self.missing_checkpoints)

    def details(self) -> list[str]:
        """One line per problem."""
        lines = [f"integrity: {line}" for line in self.integrity[:20]]
        lines += [f"run {run_id}: unreadable config ({why})" for run_id, why in self.bad_configs]
        lines += [f"run {run_id}: {what}" for run_id, what in self.missing_checkpoints]
        return lines

    def verdict(self) -> str:
        """One line: ok, or damaged and why."""
        if self.unreadable:
            return f"registry {self.path}: damaged: {self.unreadable}"
        if self.ok:
            return f"registry {self.path}: ok ({self.runs} run{'' if self.runs == 1 else 's'})"
        problems = []
        if self.integrity:
            problems.append(f"integrity check failed ({len(self.integrity)} problem"
                            f"{'' if len(self.integrity) == 1 else 's'})")
        if self.bad_configs:
            problems.append(f"{len(self.bad_configs)} run(s) with an unreadable config")
        if self.missing_checkpoints:
            problems.append(f"{len(self.missing_checkpoints)} run(s) missing checkpoints")
        return f"registry {self.path}: damaged: {'; '.join(problems)} (of {self.runs} runs)"


class Registry:
    """Access to the run registry at ``path`` (default ``cache_dir()/registry.sqlite``).

    Raises
    ------
    RegistryError
        When the file is damaged (not a database, truncated, malformed) or cannot be
        opened; the message names the file and what to do.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "registry.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.arrays_dir = self.path.parent / "evaluations"
        with self._connect() as db:
            db.executescript(SCHEMA)
            self._add_missing_columns(db)

    # ---- connections and errors ---------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as error:
            raise self._translate(error) from error
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            db.row_factory = sqlite3.Row
            yield db
        except sqlite3.Error as error:
            raise self._translate(error) from error
        finally:
            db.close()

    def _translate(self, error: sqlite3.Error) -> Exception:
        """A clear U-Net Lab error for what SQLite reported (the raw error when it is a bug)."""
        code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
        text = str(error)
        if code == _SQLITE_FULL or "database or disk is full" in text:
            return DiskFullError(f"the disk holding the run registry {self.path} is full ({text}); "
                                 "free some space, then try again")
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "not a database" in text or "malformed" in text:
            return RegistryError(
                f"the run registry {self.path} is damaged ({text}). Back it up and move it aside "
                f"(with any {self.path.name}-wal and {self.path.name}-shm beside it); a new registry "
                "is created on the next start"
            )
        if code in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_READONLY) or "unable to open" in text:
            return RegistryError(f"the run registry {self.path} cannot be opened or written ({text}); "
                                 "check that its folder exists and is writable")
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
            return RunError(f"the run registry {self.path} stayed locked by another process for 30 s ({text}); "
                            "try again")
        return error

    def _add_missing_columns(self, db: sqlite3.Connection) -> None:
        """Bring a registry made by older code up to date (new columns are all nullable)."""
        columns = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
        for name, kind in ADDED_COLUMNS.items():
            if name in columns:
                continue
            try:
                db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as error:
                if "duplicate column" not in str(error):  # another process added it just now
                    raise

    # ---- runs ---------------------------------------------------------------------------

    def create_run(self, config: RunConfig, status: str = "queued", run_id: str | None = None,
                   pid: int | None = None) -> str:
        """Insert a new run and return its id; its checkpoint folder is reserved, not created.

        A run created ``running`` is owned by process ``pid`` (default: this process).
        """
        check_config(config)  # before any id or path is built from it
        if status not in ("queued", "running"):
            raise RunError(f"a new run starts as 'queued' or 'running', not {status!r}")
        run_id = check_run_id(run_id) if run_id is not None else new_run_id(config)
        now = time.time()
        owner = (pid or os.getpid()) if status == "running" else None
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO runs (id, config, dataset, study, status, created, checkpoint_dir,"
                    " started, pid, pid_start, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, config.to_json(), config.dataset, config.study, status, now,
                     str(checkpoints_dir() / run_id), now if owner else None, owner,
                     process_start_time(owner), now if owner else None),
                )
        except sqlite3.IntegrityError:
            raise RunError(f"a run with id {run_id!r} already exists in the registry {self.path}") from None
        return run_id

    def get_run(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunError(f"no run with id {run_id!r} in the registry {self.path}")
        return self._record(row)

    def list_runs(self, status: str | Iterable[str] | None = None, dataset: str | None = None,
                  study: str | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally filtered (``status`` may be several statuses).

        Rows whose config cannot be decoded are left out (``python -m core runs check``
        lists them), so one damaged row does not hide every other run.
        """
        clauses, values = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            values.extend(statuses)
        for column, value in (("dataset", dataset), ("study", study)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM runs {where} ORDER BY created DESC, id DESC", values).fetchall()
        records = []
        for row in rows:
            try:
                records.append(self._record(row))
            except RegistryError:
                continue
        return records

    def transition(self, run_id: str, expected: str, status: str, *, error: str | None = None,
                   pid: int | None = None, pid_start: int | None = None, owner: Any = _ANY) -> bool:
        """Compare-and-set: move the run from ``expected`` to ``status`` if it still is ``expected``.

        Parameters
        ----------
        expected : str
            The status the caller read; nothing changes if the run has another one by now.
        status : str
            The new status. ``running`` sets the owning process to ``pid`` / ``pid_start``
            (``pid=None``: the queue worker is starting the process).
        error : str, optional
            Stored with an ended status (``finished``, ``failed``, ``cancelled``).
        owner : int or None, optional
            When given, the run must also be owned by this pid (``None``: by no process yet).

        Returns
        -------
        bool
            True if this call changed the run, False if it lost a race (or the run is gone).
        """
        if status not in STATUSES or expected not in STATUSES:
            raise RunError(f"unknown status {status!r} or {expected!r}; expected one of {STATUSES}")
        if status != expected and status not in ALLOWED_TRANSITIONS[expected]:
            raise RunError(f"run {run_id} is {expected}; it cannot become {status}")
        now = time.time()
        if status == "running" and expected in ("queued", "failed", "cancelled"):  # a new attempt
            sets = ("started=?, finished=NULL, error=NULL, cancel_requested=NULL, pid=?, pid_start=?, heartbeat=?,"
                    " executor=NULL, node=NULL, device=NULL", [now, pid, pid_start, now])
        elif status == "running":  # handing over (or confirming) the owner of a running run
            sets = ("pid=?, pid_start=?, heartbeat=?", [pid, pid_start, now])
        elif status == "evaluating":
            sets = ("heartbeat=?", [now])
        elif status == "queued":
            sets = ("finished=NULL, error=NULL, pid=NULL, pid_start=NULL, cancel_requested=NULL", [])
        else:  # finished, failed, cancelled; the pid stays for the record
            sets = ("finished=?, error=?", [now, error])
        where, values = "id=? AND status=?", [run_id, expected]
        if owner is not _ANY:
            where += " AND pid IS ?"
            values.append(owner)
        with self._connect() as db:
            cursor = db.execute(f"UPDATE runs SET status=?, {sets[0]} WHERE {where}",
                                [status, *sets[1], *values])
            return cursor.rowcount == 1

    def set_status(self, run_id: str, status: str, error: str | None = None, pid: int | None = None) -> None:
        """Move a run to ``status`` from the status it has now (compare-and-set).

        ``running`` makes process ``pid`` (default: this one) its owner. Raises RunError for
        a transition the life cycle does not allow, or when another process changed the run
        between the read and the write.
        """
        if status not in STATUSES:
            raise RunError(f"unknown status {status!r}; expected one of {STATUSES}")
        current = self.get_run(run_id).status
        pid_start = None
        if status == "running":
            pid = pid if pid is not None else os.getpid()
            pid_start = process_start_time(pid)
        if not self.transition(run_id, current, status, error=error, pid=pid, pid_start=pid_start):
            raise RunError(f"run {run_id} changed from {current} to {self._status_now(run_id)} "
                           f"while it was being set to {status}; nothing was changed")

    def claim(self, run_id: str, pid: int | None = None, from_worker: bool = False,
              wait_seconds: float = 15.0) -> RunRecord:
        """Make process ``pid`` (default: this one) the owner of run ``run_id`` to train it.

        A queued, failed or cancelled run becomes ``running``. A run another live process
        owns is refused; one whose process has died is reaped first, then claimed.

        ``from_worker``: this process was started by the queue worker, which claimed the run
        for it. It only takes a run that is ``running`` with this pid (waiting briefly while
        the worker records the pid) and refuses anything else, so a run cancelled while its
        process was starting is never trained.

        Raises
        ------
        RunError
            Naming the run and the process that owns it, or why it cannot be trained.
        """
        pid = pid or os.getpid()
        start = process_start_time(pid)
        deadline = time.time() + wait_seconds
        for _ in range(1000):
            record = self.get_run(run_id)
            status = record.status
            if from_worker:
                if status == "running" and record.pid == pid:
                    if record.cancel_requested:
                        self.transition(run_id, "running", "cancelled", owner=pid,
                                        error="cancelled before training started")
                        raise RunError(f"run {run_id} was cancelled before training started")
                    return record
                if status == "running" and record.pid is None and time.time() < deadline:
                    time.sleep(0.05)  # the worker records our pid right after starting us
                    continue
                raise RunError(f"run {run_id} is {status}"
                               + (f" (owned by process {record.pid})" if record.pid and record.active else "")
                               + "; the worker's claim on it is gone (cancelled while this process started?), "
                               "so this process does not train it")
            if status in ("queued", "failed", "cancelled"):
                if self.transition(run_id, status, "running", pid=pid, pid_start=start):
                    return self.get_run(run_id)
                continue  # lost a race: read again
            if status in ACTIVE_STATUSES:
                if record.pid == pid and record.pid_start in (None, start):
                    return record  # already ours
                if record.pid is None and worker_lock_held(self.path):
                    raise RunError(f"run {run_id} is being started by the queue worker; "
                                   f"cancel it first (python -m core cancel {run_id}) to train it here")
                if record.pid is not None and record.process_alive():
                    raise RunError(f"run {run_id} is already {status} in process {record.pid}; "
                                   f"cancel it first (python -m core cancel {run_id}) or wait for it to end")
                self.reap_dead([run_id])
                continue
            raise RunError(f"run {run_id} is {status}; it cannot be trained again "
                           "(queue it again to re-evaluate it)")
        raise RunError(f"run {run_id} kept changing while this process tried to claim it; try again")

    def end_attempt(self, run_id: str, status: str, error: str | None = None, pid: int | None = None) -> bool:
        """Move run ``run_id``, owned by process ``pid`` (default: this one), from ``running``
        or ``evaluating`` to ``status``. False if the run is no longer this process's."""
        pid = pid or os.getpid()
        current = self._status_now(run_id)
        if current not in ACTIVE_STATUSES:
            return False
        return self.transition(run_id, current, status, error=error, owner=pid)

    def finish_training(self, run_id: str, then_evaluate: bool, pid: int | None = None) -> str:
        """End the training phase of a run this process owns: ``evaluating`` when
        ``then_evaluate``, else ``finished``. Returns the new status.

        Raises
        ------
        RunError
            If the run has no ``best.pt`` (it is marked failed: a run is never finished
            without one), or another process changed the run meanwhile.
        """
        pid = pid or os.getpid()
        record = self.get_run(run_id)
        if not record.best_checkpoint.is_file():
            reason = (f"training ended without a best checkpoint: {record.best_checkpoint} does not exist "
                      "(no epoch's checkpoint was saved); resume the run to train it again")
            self.end_attempt(run_id, "failed", error=reason, pid=pid)
            raise RunError(f"run {run_id}: {reason}")
        status = "evaluating" if then_evaluate else "finished"
        if not self.transition(run_id, "running", status, owner=pid):
            raise RunError(f"run {run_id} was changed by another process (it is {self._status_now(run_id)} now) "
                           "while this process trained it")
        return status

    def request_cancel(self, run_id: str, expected: str, pid: int | None) -> bool:
        """Record that a cancel was asked for, if the run still is ``expected`` and owned by ``pid``.

        The owning process stops on SIGTERM; if it dies before it can record that, the
        reaper marks the run cancelled instead of failed.
        """
        with self._connect() as db:
            cursor = db.execute("UPDATE runs SET cancel_requested=? WHERE id=? AND status=? AND pid IS ?",
                                (time.time(), run_id, expected, pid))
            return cursor.rowcount == 1

    def set_placement(self, run_id: str, *, executor: str | None = None, node: str | None = None,
                      device: str | None = None, started: float | None = None) -> None:
        """Record who trains the run's current attempt, where, and (``started``) since when, if it
        began training later than it was claimed (a Ray task waits for resources). Only the
        values given change."""
        values = {"executor": executor, "node": node, "device": device, "started": started}
        given = {column: value for column, value in values.items() if value is not None}
        if not given:
            return
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {', '.join(f'{column}=?' for column in given)} WHERE id=?",
                       [*given.values(), run_id])

    def update_progress(self, run_id: str, **progress: Any) -> None:
        """Store live progress (epoch, step, ETA...) and refresh the heartbeat."""
        with self._connect() as db:
            db.execute("UPDATE runs SET progress=?, heartbeat=? WHERE id=?",
                       (json.dumps(progress), time.time(), run_id))

    def delete_run(self, run_id: str) -> None:
        """Remove a run's rows (not its checkpoint files); refuses a run a process owns.

        Works on a row whose config is damaged, too.
        """
        with self._connect() as db:
            cursor = db.execute("DELETE FROM runs WHERE id=? AND status NOT IN (?, ?)", (run_id, *ACTIVE_STATUSES))
            if cursor.rowcount == 1:
                return
            row = db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise RunError(f"no run with id {run_id!r} in the registry {self.path}")
        raise RunError(f"run {run_id} is {row['status']}; cancel it before deleting it")

    def reap_dead(self, run_ids: Iterable[str] | None = None) -> list[str]:
        """Mark ``running`` / ``evaluating`` runs whose process is gone as failed (cancelled if
        a cancel was asked for); return their ids.

        A process counts as gone when its pid is free, a zombie, or taken by a process with
        another start time (pid reuse). A run the worker is still starting (no pid yet)
        counts as gone only when no worker holds the registry's lock.
        """
        wanted = None if run_ids is None else set(run_ids)
        reaped = []
        for run in self.list_runs(status=ACTIVE_STATUSES):
            if wanted is not None and run.id not in wanted:
                continue
            if run.pid is None:
                if worker_lock_held(self.path):
                    continue
                cause = "the queue worker ended while it was starting the training process"
            elif run.process_alive():
                continue
            else:
                cause = self._death_cause(run)
            target = "cancelled" if run.cancel_requested else "failed"
            if run.cancel_requested:
                cause = f"cancelled; {cause}"
            if self.transition(run.id, run.status, target, error=cause, owner=run.pid):
                reaped.append(run.id)
        return reaped

    @staticmethod
    def _death_cause(run: RunRecord) -> str:
        reused = " (its pid now belongs to another process)" if process_alive(run.pid) else ""
        if run.status == "evaluating":
            return (f"the training process (pid {run.pid}) ended while evaluating the trained model{reused}; "
                    "resume the run to evaluate it again")
        return (f"the training process (pid {run.pid}) ended without finishing{reused}; "
                "resume the run to continue from its last checkpoint")

    def _status_now(self, run_id: str) -> str:
        with self._connect() as db:
            row = db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
        return "deleted" if row is None else row["status"]

    # ---- checking -----------------------------------------------------------------------

    @classmethod
    def check(cls, path: str | Path | None = None) -> RegistryCheck:
        """Check a registry: SQLite's integrity check, rows whose config does not decode, and
        runs whose checkpoints are missing. Nothing is changed (an old registry only gets its
        missing columns, as on every open); a missing file is not created.

        Which runs need checkpoints: a finished (or evaluating) run needs ``best.pt`` and
        ``last.pt``; any run with a stored epoch >= 1 needs ``last.pt`` (it is written before
        the epoch is stored).
        """
        path = Path(path) if path is not None else cache_dir() / "registry.sqlite"
        report = RegistryCheck(path)
        if not path.exists():
            return report
        try:
            registry = cls(path)
            with registry._connect() as db:
                lines = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
                rows = db.execute("SELECT * FROM runs").fetchall()
                trained = {row["run_id"] for row in db.execute("SELECT DISTINCT run_id FROM epochs WHERE epoch >= 1")}
        except RegistryError as error:
            report.unreadable = str(error)
            return report
        report.integrity = [line for line in lines if line != "ok"]
        report.runs = len(rows)
        for row in rows:
            try:
                record = registry._record(row)
            except RegistryError as error:
                report.bad_configs.append((row["id"], str(error.__cause__ or error)[:200]))
                continue
            needed = []
            if is_external(record.config):
                pass  # another tool's model, scored here: nothing was trained, no checkpoint to keep
            elif record.status in ("finished", "evaluating"):
                needed = ["best.pt", "last.pt"]
            elif record.id in trained:
                needed = ["last.pt"]
            if needed and not record.checkpoint_dir.is_dir():
                report.missing_checkpoints.append((record.id, f"checkpoint folder {record.checkpoint_dir} is missing"))
                continue
            missing = [name for name in needed if not (record.checkpoint_dir / name).is_file()]
            if missing:
                report.missing_checkpoints.append(
                    (record.id, f"{' and '.join(missing)} missing in {record.checkpoint_dir} ({record.status})"))
        return report

    # ---- per-epoch metrics ------------------------------------------------------------

    def add_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        """Store (or replace, on resume) the metrics of one finished epoch."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, metrics, created) VALUES (?, ?, ?, ?)",
                       (run_id, epoch, json.dumps(metrics), time.time()))

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        """Per-epoch metrics in epoch order, each with its ``epoch`` number."""
        with self._connect() as db:
            rows = db.execute("SELECT epoch, metrics FROM epochs WHERE run_id=? ORDER BY epoch",
                              (run_id,)).fetchall()
        return [{"epoch": row["epoch"], **json.loads(row["metrics"])} for row in rows]

    def truncate_epochs(self, run_id: str, after_epoch: int) -> None:
        """Drop epochs later than ``after_epoch`` (a resumed run replays them)."""
        with self._connect() as db:
            db.execute("DELETE FROM epochs WHERE run_id=? AND epoch>?", (run_id, after_epoch))

    # ---- evaluations ------------------------------------------------------------------

    def save_evaluation(self, run_id: str, split: str, summary: dict[str, Any],
                        arrays: dict[str, np.ndarray] | None = None) -> None:
        """Store an evaluation (replacing an earlier one of the same split)."""
        from core.fileio import atomic_path

        arrays_path = None
        if arrays:
            final = self.arrays_dir / f"{check_run_id(run_id)}-{split}.npz"
            with atomic_path(final, suffix=".npz") as temporary:
                np.savez_compressed(temporary, **arrays)
            arrays_path = str(final)
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO evaluations (run_id, split, summary, arrays_path, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (run_id, split, json.dumps(summary), arrays_path, time.time()),
            )

    def get_evaluation(self, run_id: str, split: str = "val") -> dict[str, Any] | None:
        """The stored summary of an evaluation, or None if there is none."""
        with self._connect() as db:
            row = db.execute("SELECT summary FROM evaluations WHERE run_id=? AND split=?",
                             (run_id, split)).fetchone()
        return None if row is None else json.loads(row["summary"])

    def evaluation_arrays(self, run_id: str, split: str = "val") -> dict[str, np.ndarray]:
        """The arrays stored with an evaluation (empty if none)."""
        with self._connect() as db:
            row = db.execute("SELECT arrays_path FROM evaluations WHERE run_id=? AND split=?",
                             (run_id, split)).fetchone()
        if row is None or not row["arrays_path"] or not Path(row["arrays_path"]).exists():
            return {}
        with np.load(row["arrays_path"], allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}

    # ---- helpers ----------------------------------------------------------------------

    def _record(self, row: sqlite3.Row) -> RunRecord:
        """Decode one ``runs`` row; RegistryError naming the run if its config is damaged."""
        try:
            values = json.loads(row["config"])
            if not isinstance(values, dict):
                raise TypeError(f"expected a JSON object, got {type(values).__name__}")
            config = RunConfig.from_dict(values)
            progress = json.loads(row["progress"]) if row["progress"] else {}
        except (ValueError, TypeError) as error:
            raise RegistryError(
                f"run {row['id']} in the registry {self.path} has a damaged config ({str(error)[:120]}); "
                "`python -m core runs check` lists such runs"
            ) from error
        keys = row.keys()
        return RunRecord(
            id=row["id"],
            config=config,
            status=row["status"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            error=row["error"],
            pid=row["pid"],
            checkpoint_dir=Path(row["checkpoint_dir"]),
            study=row["study"],
            progress=progress if isinstance(progress, dict) else {},
            heartbeat=row["heartbeat"],
            pid_start=row["pid_start"] if "pid_start" in keys else None,
            cancel_requested=row["cancel_requested"] if "cancel_requested" in keys else None,
            executor=row["executor"] if "executor" in keys else None,
            node=row["node"] if "node" in keys else None,
            device=row["device"] if "device" in keys else None,
        )
