"""The training queue: runs are launched by inserting them as ``queued`` in the registry;
one detached worker process per registry starts them, at most N at a time, each as its
own ``python -m core train --resume RUN_ID`` process.

Nothing lives in the app's process: closing the browser, reloading the page or
restarting Streamlit loses nothing, and the worker (and its training processes) carry
on. The worker holds an exclusive ``flock`` on ``worker.lock`` beside the registry, so a
second worker is never started: the lock vanishes with its process, however it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.config import RunConfig
from core.errors import RunError
from core.paths import PROJECT_ROOT
from core.runs import Registry, process_alive


def enqueue(configs: list[RunConfig], registry: Registry | None = None, start_worker: bool = True) -> list[str]:
    """Insert runs as ``queued`` (in order) and make sure a worker is running."""
    registry = registry or Registry()
    run_ids = [registry.create_run(config, status="queued") for config in configs]
    if start_worker:
        ensure_worker(registry)
    return run_ids


def resume(run_id: str, registry: Registry | None = None, start_worker: bool = True) -> None:
    """Queue a failed or cancelled run again; it continues from its ``last.pt``."""
    registry = registry or Registry()
    registry.reap_dead()
    status = registry.get_run(run_id).status
    if status not in ("failed", "cancelled"):
        raise RunError(f"run {run_id} is {status}; only failed or cancelled runs can be resumed")
    registry.set_status(run_id, "queued")
    if start_worker:
        ensure_worker(registry)


def cancel(run_id: str, registry: Registry | None = None) -> str:
    """Cancel a queued run, or ask a running one to stop (SIGTERM; it stops after its step).

    Returns the status the run has (or is about to have).
    """
    registry = registry or Registry()
    run = registry.get_run(run_id)
    if run.status == "queued":
        registry.set_status(run_id, "cancelled", error="cancelled before it started")
        return "cancelled"
    if run.status == "running":
        if run.pid and process_alive(run.pid):
            os.kill(run.pid, signal.SIGTERM)
            return "cancelling"
        registry.reap_dead()
        return registry.get_run(run_id).status
    raise RunError(f"run {run_id} is {run.status}; only queued or running runs can be cancelled")


def lock_path(registry: Registry) -> Path:
    return registry.path.with_name("worker.lock")


def worker_running(registry: Registry) -> bool:
    """True when some process holds the worker lock of this registry."""
    path = lock_path(registry)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def settings_path(registry: Registry) -> Path:
    return registry.path.with_name("worker-settings.json")


def set_max_parallel(max_parallel: int, registry: Registry | None = None) -> None:
    """How many runs the worker trains at once; a running worker picks it up within a second."""
    registry = registry or Registry()
    if max_parallel < 1:
        raise RunError(f"runs trained at once must be at least 1, got {max_parallel}")
    path = settings_path(registry)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"max_parallel": int(max_parallel)}))
    os.replace(temporary, path)


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


def run_worker(registry: Registry | None = None, max_parallel: int | None = None,
               idle_exit_seconds: float = 30.0, poll_seconds: float = 1.0) -> int:
    """The worker loop: start queued runs (oldest first), at most ``max_parallel`` at once.

    Exits when it finds another worker, or when nothing has been queued or running for
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

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for run_id, child in list(children.items()):
                if child.poll() is not None:
                    del children[run_id]
            registry.reap_dead()
            running = registry.list_runs(status="running")
            max_parallel = current_max_parallel(registry, default_parallel())
            queued = sorted(registry.list_runs(status="queued"), key=lambda run: (run.created, run.id))
            free = max_parallel - len(running)
            for run in queued[:max(free, 0)]:
                with open(logs / f"{run.id}.log", "a") as log:
                    child = subprocess.Popen(
                        [sys.executable, "-m", "core", "train", "--resume", run.id, "--quiet", "--json"],
                        cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                # Mark it running with the child's pid now, so the next poll neither starts it
                # twice nor counts it as free capacity.
                registry.set_status(run.id, "running", pid=child.pid)
                children[run.id] = child
                started += 1
                print(f"started run {run.id} (pid {child.pid})", flush=True)
            if running or queued or children:
                idle_since = time.time()
            elif time.time() - idle_since > idle_exit_seconds:
                break
            time.sleep(poll_seconds)
    finally:
        handle.close()
    return started


def wait_for(run_ids: list[str], registry: Registry | None = None, timeout: float = 3600,
             poll_seconds: float = 1.0) -> dict[str, str]:
    """Block until every run has ended (finished, failed or cancelled); return their statuses."""
    registry = registry or Registry()
    deadline = time.time() + timeout
    while True:
        registry.reap_dead()
        statuses = {run_id: registry.get_run(run_id).status for run_id in run_ids}
        if all(status in ("finished", "failed", "cancelled") for status in statuses.values()):
            return statuses
        if time.time() > deadline:
            raise RunError(f"runs still not done after {timeout:.0f} s: {statuses}")
        time.sleep(poll_seconds)
