"""The training queue: runs are launched by inserting them as ``queued`` in the registry;
one detached worker process per registry starts them, at most N at a time, each as its
own ``python -m core train --resume RUN_ID`` process.

Nothing lives in the app's process: closing the browser, reloading the page or
restarting Streamlit loses nothing, and the worker (and its training processes) carry
on. The worker holds an exclusive ``flock`` on ``worker.lock`` beside the registry, so a
second worker is never started: the lock vanishes with its process, however it ends.

Claiming is race-free: the worker moves a run ``queued -> running`` with a compare-and-set
before it starts the process, and the process (``--from-worker``) trains the run only if
it is still ``running`` under its own pid. A ``cancel`` landing at any moment of that
hand-over therefore wins, and no process trains a cancelled run. A run that cannot be
started (bad id or settings, a failed process start) is marked failed with the reason and
the worker goes on with the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.config import RunConfig
from core.errors import RegistryError, RunError, UNetLabError
from core.fileio import atomic_write_text
from core.paths import PROJECT_ROOT
from core.runs import (ACTIVE_STATUSES, ENDED_STATUSES, Registry, RunRecord, check_config, process_start_time,
                       signal_process, valid_run_id, worker_lock_held, worker_lock_path)


def enqueue(configs: list[RunConfig], registry: Registry | None = None, start_worker: bool = True) -> list[str]:
    """Insert runs as ``queued`` (in order) and make sure a worker is running."""
    registry = registry or Registry()
    run_ids = [registry.create_run(config, status="queued") for config in configs]
    if start_worker:
        ensure_worker(registry)
    return run_ids


def resume(run_id: str, registry: Registry | None = None, start_worker: bool = True) -> None:
    """Queue a failed or cancelled run again; it continues from its ``last.pt``."""
    from core.runs import check_run_id

    check_run_id(run_id)  # an id that could not name a folder is never queued, whatever its row says
    registry = registry or Registry()
    registry.reap_dead([run_id])
    status = registry.get_run(run_id).status
    if status not in ("failed", "cancelled"):
        raise RunError(f"run {run_id} is {status}; only failed or cancelled runs can be resumed")
    if not registry.transition(run_id, status, "queued"):
        raise RunError(f"run {run_id} changed from {status} to {registry.get_run(run_id).status} "
                       "while it was being queued again; nothing was changed")
    if start_worker:
        ensure_worker(registry)


def cancel(run_id: str, registry: Registry | None = None) -> str:
    """Cancel a queued run, or ask a running (or evaluating) one to stop.

    A queued run, or one whose process the worker is still starting, is cancelled at once
    (compare-and-set: a worker claiming it at the same moment loses and never trains it).
    A run a live process owns is asked to stop with SIGTERM, sent only if the pid still
    belongs to the process that started the run (pid and start time); it stops after its
    current step. A run whose process is gone is reaped.

    Returns the status the run has (or is about to have: ``cancelling``).
    """
    registry = registry or Registry()
    for _ in range(50):
        run = registry.get_run(run_id)
        if run.status == "queued":
            if registry.transition(run_id, "queued", "cancelled", error="cancelled before it started"):
                return "cancelled"
            continue  # the worker claimed it meanwhile: look again
        if run.status not in ACTIVE_STATUSES:
            raise RunError(f"run {run_id} is {run.status}; only queued, running or evaluating runs can be cancelled")
        if run.pid is None:  # the worker is starting its process, which then finds it cancelled
            if registry.transition(run_id, run.status, "cancelled", owner=None, error="cancelled before it started"):
                return "cancelled"
            continue
        if not run.process_alive():
            registry.reap_dead([run_id])
            return registry.get_run(run_id).status
        if not registry.request_cancel(run_id, run.status, run.pid):
            continue
        if run.executor == "ray":  # its launching process sees the request and stops the Ray task
            return "cancelling"
        if signal_process(run.pid, run.pid_start, signal.SIGTERM):
            return "cancelling"
        registry.reap_dead([run_id])  # it ended just now
        return registry.get_run(run_id).status
    raise RunError(f"run {run_id} kept changing while it was being cancelled; try again")


def lock_path(registry: Registry) -> Path:
    return worker_lock_path(registry.path)


def worker_running(registry: Registry) -> bool:
    """True when some process holds the worker lock of this registry."""
    return worker_lock_held(registry.path)


def settings_path(registry: Registry) -> Path:
    return registry.path.with_name("worker-settings.json")


def set_max_parallel(max_parallel: int, registry: Registry | None = None) -> None:
    """How many runs the worker trains at once; a running worker picks it up within a second."""
    registry = registry or Registry()
    if max_parallel < 1:
        raise RunError(f"runs trained at once must be at least 1, got {max_parallel}")
    atomic_write_text(settings_path(registry), json.dumps({"max_parallel": int(max_parallel)}))


def current_max_parallel(registry: Registry, default: int) -> int:
    """The stored setting of :func:`set_max_parallel`, else ``default``."""
    try:
        return max(1, int(json.loads(settings_path(registry).read_text())["max_parallel"]))
    except (OSError, ValueError, KeyError, TypeError):
        return default


def ensure_worker(registry: Registry | None = None, max_parallel: int | None = None) -> bool:
    """Start a detached worker for this registry unless one runs; True if one was started.

    ``max_parallel``, when given, also applies to a worker that is already running.
    """
    registry = registry or Registry()
    if max_parallel:
        set_max_parallel(max_parallel, registry)
    if worker_running(registry):
        return False
    log = open(registry.path.with_name("worker.log"), "a")
    command = [sys.executable, "-m", "core", "worker"]
    subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
    log.close()
    return True


def default_parallel() -> int:
    """One run at a time on the CPU (a run already uses every core); one per GPU otherwise."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def child_command(run_id: str) -> list[str]:
    """The training process the worker starts for a run it claimed."""
    return [sys.executable, "-m", "core", "train", "--resume", run_id, "--from-worker", "--quiet", "--json"]


def start_run(registry: Registry, run: RunRecord, logs: Path) -> subprocess.Popen | None:
    """Claim a queued run and start its training process; the process, or None if none was started.

    The claim is a compare-and-set ``queued -> running`` made *before* the process exists
    (owner: none yet), then the child's pid and start time are recorded. A cancel that
    lands before the claim wins (the run is not started); one that lands while the
    process starts wins too: the process, started with ``--from-worker``, only trains a
    run still ``running`` under its own pid. A run that cannot be started is marked failed
    with the reason, so it never blocks the queue.
    """
    def fail(expected: str, reason: str) -> None:
        # A run claimed by the worker has no owning process yet: only that state may fail here.
        owner = {"owner": None} if expected == "running" else {}
        if registry.transition(run.id, expected, "failed", error=reason, **owner):
            print(f"run {run.id}: failed: {reason}", flush=True)

    if not valid_run_id(run.id):
        fail("queued", f"run id {run.id!r} is not a plain file name (only letters, digits, '.', '_' and '-'); "
                       "it cannot be trained: queue its settings again as a new run")
        return None
    try:
        check_config(run.config)
    except UNetLabError as error:
        fail("queued", f"cannot start: {error}")
        return None
    if not registry.transition(run.id, "queued", "running", pid=None, pid_start=None):
        return None  # cancelled (or claimed) after the queue was read: leave it be
    try:
        with open(logs / f"{run.id}.log", "a") as log:
            child = subprocess.Popen(child_command(run.id), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
    except Exception as error:  # noqa: BLE001 - any reason is recorded with the run; the queue goes on
        fail("running", f"the worker could not start the training process: {type(error).__name__}: {error}")
        return None
    # The start time is read while the child surely exists (it is our child: even if it has
    # exited, it stays a zombie until we wait for it), and it is the same after exec.
    if not registry.transition(run.id, "running", "running", pid=child.pid,
                               pid_start=process_start_time(child.pid), owner=None):
        print(f"run {run.id}: cancelled while its process (pid {child.pid}) started; it will not train",
              flush=True)
    return child


def record_exit(registry: Registry, run_id: str, child: subprocess.Popen, log_path: Path) -> None:
    """A training process ended: if it left its run running or evaluating, record why."""
    try:
        run = registry.get_run(run_id)
    except RunError:
        return
    if run.status not in ACTIVE_STATUSES or run.pid != child.pid:
        return
    code = child.returncode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with status {code}"
    reason = f"the training process (pid {child.pid}) {how} before the run ended"
    last = _last_line(log_path)
    if last:
        reason += f": {last}"
    target = "cancelled" if run.cancel_requested else "failed"
    registry.transition(run_id, run.status, target, error=reason, owner=child.pid)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (what a crashing process said last), or ''."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else ""


def run_worker(registry: Registry | None = None, max_parallel: int | None = None,
               idle_exit_seconds: float = 30.0, poll_seconds: float = 1.0) -> int:
    """The worker loop: start queued runs (oldest first), at most ``max_parallel`` at once.

    Exits when it finds another worker, or when nothing has been queued or in flight for
    ``idle_exit_seconds``. Returns the number of runs it started.
    """
    registry = registry or Registry()
    if max_parallel:
        set_max_parallel(max_parallel, registry)
    handle = open(lock_path(registry), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another worker already serves this registry; exiting", flush=True)
        handle.close()
        return 0
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "started": time.time()}))
    handle.flush()

    children: dict[str, subprocess.Popen] = {}
    started, idle_since = 0, time.time()
    logs = registry.path.with_name("logs")
    logs.mkdir(exist_ok=True)
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    # A worker run inside another program (tests) gives SIGTERM back when it returns.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    try:
        while not stopping:
            busy = False
            try:
                for run_id, child in list(children.items()):
                    if child.poll() is not None:
                        del children[run_id]
                        record_exit(registry, run_id, child, logs / f"{run_id}.log")
                # This worker's own children are recorded by record_exit above, with their exit
                # status and last words; reaping them too would race it when one exits between
                # its poll and this call (a zombie counts as gone).
                registry.reap_dead([run.id for run in registry.list_runs(status=ACTIVE_STATUSES)
                                    if run.id not in children])
                # Runs a Ray launcher owns train on Ray's resources, not in this worker's slots.
                in_flight = [run for run in registry.list_runs(status=ACTIVE_STATUSES) if run.executor != "ray"]
                max_parallel = current_max_parallel(registry, default_parallel())
                queued = sorted(registry.list_runs(status="queued"), key=lambda run: (run.created, run.id))
                busy = bool(in_flight or queued or children)
                free = max_parallel - len(in_flight)
                for run in queued:
                    if free <= 0:
                        break
                    child = start_run(registry, run, logs)
                    if child is None:
                        continue  # failed or cancelled: the next queued run takes the slot
                    children[run.id] = child
                    started += 1
                    free -= 1
                    print(f"started run {run.id} (pid {child.pid})", flush=True)
            except RegistryError as error:
                print(f"worker: {error}; exiting", flush=True)
                break
            except (UNetLabError, OSError) as error:  # e.g. the registry stayed locked: try again
                print(f"worker: {type(error).__name__}: {error}; retrying", flush=True)
                busy = True
            if busy:
                idle_since = time.time()
            elif time.time() - idle_since > idle_exit_seconds:
                break
            time.sleep(poll_seconds)
    finally:
        handle.close()
        if in_main_thread and previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return started


def wait_for(run_ids: list[str], registry: Registry | None = None, timeout: float = 3600,
             poll_seconds: float = 1.0) -> dict[str, str]:
    """Block until every run has ended (finished, failed or cancelled); return their statuses."""
    registry = registry or Registry()
    deadline = time.time() + timeout
    while True:
        registry.reap_dead()
        statuses = {run_id: registry.get_run(run_id).status for run_id in run_ids}
        if all(status in ENDED_STATUSES for status in statuses.values()):
            return statuses
        if time.time() > deadline:
            raise RunError(f"runs still not done after {timeout:.0f} s: {statuses}")
        time.sleep(poll_seconds)
