"""The run registry: a SQLite database (WAL mode) under ``cache/``.

One row per run (config, status, times, process id, checkpoint folder, live progress),
one row per finished epoch, one row per stored evaluation. Bulky arrays (curves,
sample predictions) live as ``.npz`` files beside the database and are referenced by path.

Several processes use it at once: each training process writes its own run's rows, the
app and the CLI read. Every call opens a short-lived connection, so nothing is shared
across processes or threads.

Status moves ``queued -> running -> finished | failed | cancelled``; a failed or
cancelled run can be queued again (resumed). A ``running`` run whose process has died
is found by :func:`Registry.reap_dead` and marked failed.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from core.config import RunConfig
from core.errors import RunError
from core.paths import cache_dir, checkpoints_dir

STATUSES = ("queued", "running", "finished", "failed", "cancelled")
ALLOWED_TRANSITIONS = {
    "queued": {"running", "cancelled", "failed"},
    "running": {"finished", "failed", "cancelled"},
    "failed": {"queued", "running"},
    "cancelled": {"queued", "running"},
    "finished": {"queued"},  # re-queued only to train further or re-evaluate
}

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
    heartbeat REAL
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

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

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
            "checkpoint_dir": str(self.checkpoint_dir),
            "progress": self.progress,
            "config": self.config.to_dict(),
        }


def new_run_id(config: RunConfig) -> str:
    """A sortable, readable id: creation time, dataset and a random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.dataset}-{secrets.token_hex(3)}"


def process_alive(pid: int | None) -> bool:
    """True when a process with this id exists (and is not a zombie) on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited but not been reaped by its parent: treat it as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class Registry:
    """Access to the run registry at ``path`` (default ``cache_dir()/registry.sqlite``)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "registry.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.arrays_dir = self.path.parent / "evaluations"
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    # ---- runs -------------------------------------------------------------------------

    def create_run(self, config: RunConfig, status: str = "queued", run_id: str | None = None) -> str:
        """Insert a new run and return its id; its checkpoint folder is reserved, not created."""
        config.validate()
        if status not in ("queued", "running"):
            raise RunError(f"a new run starts as 'queued' or 'running', not {status!r}")
        run_id = run_id or new_run_id(config)
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, config, dataset, study, status, created, checkpoint_dir)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, config.to_json(), config.dataset, config.study, status, time.time(),
                 str(checkpoints_dir() / run_id)),
            )
        return run_id

    def get_run(self, run_id: str) -> RunRecord:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunError(f"no run with id {run_id!r} in the registry {self.path}")
        return self._record(row)

    def list_runs(self, status: str | None = None, dataset: str | None = None,
                  study: str | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally filtered."""
        clauses, values = [], []
        for column, value in (("status", status), ("dataset", dataset), ("study", study)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM runs {where} ORDER BY created DESC, id DESC", values).fetchall()
        return [self._record(row) for row in rows]

    def set_status(self, run_id: str, status: str, error: str | None = None, pid: int | None = None) -> None:
        """Move a run to ``status``; refuses transitions the life cycle does not allow."""
        if status not in STATUSES:
            raise RunError(f"unknown status {status!r}; expected one of {STATUSES}")
        current = self.get_run(run_id).status
        if status != current and status not in ALLOWED_TRANSITIONS[current]:
            raise RunError(f"run {run_id} is {current}; it cannot become {status}")
        now = time.time()
        with self._connect() as db:
            if status == "running":
                db.execute(
                    "UPDATE runs SET status=?, started=?, finished=NULL, error=NULL, pid=?, heartbeat=?"
                    " WHERE id=?",
                    (status, now, pid if pid is not None else os.getpid(), now, run_id),
                )
            elif status == "queued":
                db.execute("UPDATE runs SET status=?, finished=NULL, error=NULL, pid=NULL WHERE id=?",
                           (status, run_id))
            else:
                db.execute("UPDATE runs SET status=?, finished=?, error=? WHERE id=?",
                           (status, now, error, run_id))

    def update_progress(self, run_id: str, **progress: Any) -> None:
        """Store live progress (epoch, step, ETA...) and refresh the heartbeat."""
        with self._connect() as db:
            db.execute("UPDATE runs SET progress=?, heartbeat=? WHERE id=?",
                       (json.dumps(progress), time.time(), run_id))

    def delete_run(self, run_id: str) -> None:
        """Remove a run's rows (not its checkpoint files); refuses a running run."""
        if self.get_run(run_id).status == "running":
            raise RunError(f"run {run_id} is running; cancel it before deleting it")
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    def reap_dead(self) -> list[str]:
        """Mark ``running`` runs whose process no longer exists as failed; return their ids."""
        dead = [run for run in self.list_runs(status="running") if not process_alive(run.pid)]
        for run in dead:
            self.set_status(run.id, "failed",
                            error=f"the training process (pid {run.pid}) ended without finishing; "
                                  "resume the run to continue from its last checkpoint")
        return [run.id for run in dead]

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
        arrays_path = None
        if arrays:
            self.arrays_dir.mkdir(parents=True, exist_ok=True)
            final = self.arrays_dir / f"{run_id}-{split}.npz"
            temporary = final.with_name(final.stem + ".tmp.npz")
            np.savez_compressed(temporary, **arrays)
            os.replace(temporary, final)
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

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"],
            config=RunConfig.from_dict(json.loads(row["config"])),
            status=row["status"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            error=row["error"],
            pid=row["pid"],
            checkpoint_dir=Path(row["checkpoint_dir"]),
            study=row["study"],
            progress=json.loads(row["progress"]) if row["progress"] else {},
            heartbeat=row["heartbeat"],
        )
