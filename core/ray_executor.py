"""Training runs as Ray tasks: a study's grid (or one run) on this machine or on a cluster, CPU and GPU.

The local queue (:mod:`core.queue`) stays the default and needs nothing; this module is used by
``study run ... --executor ray`` and ``train ... --executor ray`` and is the only one that
imports ``ray`` (inside its functions, so ``unetlab --help`` and the local queue never do).

Design
------
*One run is one Ray task* (:func:`_train_on_worker`) with declared resources (``num_cpus``,
``num_gpus``, fractions allowed) and ``max_retries``. Ray does the scheduling, the retries and
the cancelling; nothing here is a scheduler. Each task runs in a fresh worker process
(``max_calls=1``), so a run's device, thread count and GPU memory never leak into the next one.
Inside, the device is what Ray assigned: CUDA when the task holds a GPU share
(``ray.get_gpu_ids()``), else the CPU (CUDA is hidden from a task without a GPU share).

*Shared-nothing.* A worker needs no shared filesystem and no copy of the registry. The
launching process (:class:`RayExecutor`) is the only writer of the registry and of
``checkpoints/<run>/``. A task receives the run's config, the dataset's decoded arrays through
the object store (one ``ray.put`` per dataset and image size; or, with ``--data-on-nodes``, the
worker loads the run's ``root``, a path every node has) and, for a resumed run, its ``last.pt``,
``best.pt`` and stored epochs.

*The training code is not changed for Ray.* The task runs the ordinary life cycle
(:func:`core.lifecycle.train_then_evaluate`, so :mod:`core.train` exactly as the local queue
runs it) against a temporary registry and checkpoint folder on the worker. That registry is a
:class:`ForwardingRegistry`: every write the run makes (epoch metrics, progress, status
changes, the evaluation) is stored locally *and* sent to the launcher as it happens. The
training loop stores an epoch's metrics right after writing that epoch's ``last.pt`` (and
``best.pt``), so :meth:`ForwardingRegistry.add_epoch` sends the epoch row together with the
checkpoint files that changed, as one message, and waits until it is delivered: the launcher
never holds an epoch without its checkpoint, and a checkpoint reaches the launching machine as
soon as it is written.

*Messages* go to a small actor, :class:`_Relay`, pinned to the launcher's node (so it outlives
any worker node). The launcher drains it twice a second and writes what came into its registry
and checkpoint folder, so the Train page, ``runs show`` and ``study status`` follow a remote run
exactly like a local one. The relay also keeps each run's latest whole epoch (rows and
checkpoint bytes) for a retried attempt.

*Faults.* If a worker node dies, Ray retries the task (on another node). The new attempt asks
the relay for the run's latest state and resumes from the last whole epoch; since every epoch's
randomness is seeded from (seed, epoch), it ends with the metrics of an uninterrupted run.
Messages from a superseded attempt are dropped. If the retries are used up the run is marked
failed (resumable). *Cancel* works as for local runs: ``cancel RUN_ID`` (or the Train page)
records the request in the registry with a compare-and-set; the launcher sees it, calls
``ray.cancel`` on the task and marks the run ``cancelled`` (resumable from ``last.pt``). Ctrl-C
or SIGTERM to the launcher cancels its runs the same way. *Launcher death:* its runs are owned
by its pid, so the reaper marks them failed once it is gone, and ``study run NAME`` (or
``train --resume ID --executor ray``) resumes them from the checkpoints on the launching machine.

The registry records where each run trained (``executor``, ``node``, ``device`` columns), shown
as "Trained on (node, device)" in the runs and study tables.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from core.errors import RunError, UNetLabError
from core.fileio import atomic_write_bytes
from core.runs import ACTIVE_STATUSES, Registry, check_run_id, failure_cause

#: The checkpoint files a run's folder holds; both travel between the launcher and its tasks.
CHECKPOINT_FILES = ("last.pt", "best.pt")
#: Environment variable naming the cluster to join when ``--address`` is not given.
ADDRESS_VARIABLE = "UNETLAB_RAY_ADDRESS"
#: Seconds the launcher waits for a cancelled task to stop before killing its worker process.
FORCE_CANCEL_AFTER = 30.0


def import_ray():
    """The ``ray`` module, or UNetLabError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UNetLabError("the Ray executor needs ray: pip install 'ray>=2.40,<3' "
                           "(or pip install -r requirements.txt)") from None
    return ray


# --------------------------------------------------------------------------------------
# Options and connecting
# --------------------------------------------------------------------------------------


@dataclass
class RayOptions:
    """How runs are given to Ray (the ``--executor ray`` options)."""

    #: ``HOST:PORT`` of a running cluster (``ray start --head`` prints it); None: the
    #: ``UNETLAB_RAY_ADDRESS`` variable, else a local Ray instance is started.
    address: str | None = None
    #: CPUs each run's task asks for. None: 1 when it has a GPU share, else every core of the
    #: smallest node (one CPU run per machine using all its cores, as the local queue trains).
    cpus_per_run: float | None = None
    #: GPUs each run's task asks for; fractions share a GPU (0.25: four runs per GPU).
    gpus_per_run: float = 0.0
    #: Times Ray runs a task again after its worker or node died.
    max_retries: int = 3
    #: Workers load the dataset from the run's ``root`` (a path every node has) instead of
    #: receiving the arrays from the launcher.
    data_on_nodes: bool = False
    #: CPUs of a local instance (default: every core of this machine).
    local_cpus: int | None = None
    poll_seconds: float = 0.5

    def validate(self) -> "RayOptions":
        if self.cpus_per_run is not None and not self.cpus_per_run > 0:
            raise UNetLabError(f"--cpus-per-run must be more than 0, got {self.cpus_per_run:g}")
        if not self.gpus_per_run >= 0:
            raise UNetLabError(f"--gpus-per-run must be 0 or more, got {self.gpus_per_run:g}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise UNetLabError(f"--gpus-per-run above 1 must be a whole number, got {self.gpus_per_run:g}")
        if self.max_retries < 0:
            raise UNetLabError(f"--max-retries must be 0 or more, got {self.max_retries}")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise UNetLabError(f"--ray-cpus must be at least 1, got {self.local_cpus}")
        return self

    def cluster_address(self) -> str | None:
        return self.address or os.environ.get(ADDRESS_VARIABLE) or None


def connect(options: RayOptions) -> bool:
    """Join the cluster at the options' address, or start a local Ray instance; True if this
    call connected (and so should disconnect), False if this process was already connected."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = options.cluster_address()
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            # Ray runs its workers at niceness 15; a local instance's runs get the priority this
            # machine's queue gives its training processes (0), so that other work on the machine
            # does not slow them more than it slows the local queue. A cluster's nodes keep what
            # their `ray start` gave them.
            ray.init(num_cpus=options.local_cpus or os.cpu_count() or 1, include_dashboard=False,
                     _system_config={"worker_niceness": 0}, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UNetLabError(f"could not connect to {where}: {error}") from None
    return True


def default_cpus_per_run(options: RayOptions) -> float:
    """See :attr:`RayOptions.cpus_per_run`."""
    if options.cpus_per_run is not None:
        return float(options.cpus_per_run)
    if options.gpus_per_run > 0:
        return 1.0
    ray = import_ray()
    cpus = [node.get("Resources", {}).get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    cpus = [count for count in cpus if count > 0]
    return float(min(cpus)) if cpus else 1.0


# --------------------------------------------------------------------------------------
# The relay: a mailbox on the launcher's node
# --------------------------------------------------------------------------------------


class _Relay:
    """Receives what the tasks send, in order, until the launcher drains it (a Ray actor).

    For each run it keeps the latest whole epoch (stored epochs and checkpoint bytes), from
    which a retried attempt resumes, and the number of the current attempt: messages of an
    older attempt (a task Ray already gave up on) are refused.
    """

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.pending: list[tuple[str, str, Any]] = []

    def begin(self, run_id: str, state: dict[str, Any]) -> None:
        """The launcher's state of a run about to be submitted (epochs and checkpoint files)."""
        self.runs[run_id] = {"attempt": 0, "epochs": {row["epoch"]: row for row in state["epochs"]},
                             "files": dict(state["files"])}

    def start_attempt(self, run_id: str, placement: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A task (first try or a retry) starts: its attempt number and the state to resume from."""
        run = self.runs[run_id]
        run["attempt"] += 1
        self.pending.append((run_id, "started", {**placement, "attempt": run["attempt"]}))
        state = {"epochs": [run["epochs"][epoch] for epoch in sorted(run["epochs"])], "files": dict(run["files"])}
        return run["attempt"], state

    def push(self, run_id: str, attempt: int, kind: str, payload: Any) -> bool:
        """One message of a run's current attempt; False (dropped) if the attempt is superseded."""
        run = self.runs.get(run_id)
        if run is None or attempt != run["attempt"]:
            return False
        if kind == "flush":
            return True
        if kind == "epoch":
            run["files"].update(payload["files"])
            run["epochs"][payload["epoch"]] = {"epoch": payload["epoch"], **payload["metrics"]}
        elif kind == "truncate":
            run["epochs"] = {epoch: row for epoch, row in run["epochs"].items() if epoch <= payload}
        self.pending.append((run_id, kind, payload))
        return True

    def drain(self) -> list[tuple[str, str, Any]]:
        """Every message received since the last drain, in order."""
        pending, self.pending = self.pending, []
        return pending

    def forget(self, run_id: str) -> None:
        self.runs.pop(run_id, None)


# --------------------------------------------------------------------------------------
# The worker side
# --------------------------------------------------------------------------------------


class ForwardingRegistry(Registry):
    """A worker-local registry that also sends every write of its run to the launcher.

    The training loop and the life cycle use it as they use the launcher's registry; the
    launcher replays the messages into its own. ``add_epoch`` (called by the training loop
    right after it wrote the epoch's checkpoints) and ``save_evaluation`` wait until the relay
    has the message; progress and status changes are sent without waiting (a relay keeps one
    caller's messages in order).
    """

    def __init__(self, path: str | Path, relay: Any, run_id: str, attempt: int):
        super().__init__(path)
        self.relay, self.run_id, self.attempt = relay, run_id, attempt
        self._sent: dict[str, tuple[int, int]] = {}  # file name -> (mtime_ns, size) last sent or seeded
        self._sent.update(self._changed_files(read=False))

    def _send(self, kind: str, payload: Any, wait: bool = False) -> None:
        ray = import_ray()
        reference = self.relay.push.remote(self.run_id, self.attempt, kind, payload)
        if wait and not ray.get(reference):
            raise RunError(f"run {self.run_id}: this attempt ({self.attempt}) was superseded by a newer one; "
                           "it stops here")

    def _changed_files(self, read: bool = True) -> dict[str, Any]:
        """Checkpoint files changed since they were last sent: name -> bytes (or stat if not ``read``)."""
        folder = self.get_run(self.run_id).checkpoint_dir
        changed: dict[str, Any] = {}
        for name in CHECKPOINT_FILES:
            try:
                stat = (folder / name).stat()
            except FileNotFoundError:
                continue
            key = (stat.st_mtime_ns, stat.st_size)
            if self._sent.get(name) == key:
                continue
            if read:
                changed[name] = (folder / name).read_bytes()
                self._sent[name] = key
            else:
                changed[name] = key
        return changed

    def add_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        super().add_epoch(run_id, epoch, metrics)
        if run_id == self.run_id:
            self._send("epoch", {"epoch": epoch, "metrics": metrics, "files": self._changed_files()}, wait=True)

    def truncate_epochs(self, run_id: str, after_epoch: int) -> None:
        super().truncate_epochs(run_id, after_epoch)
        if run_id == self.run_id:
            self._send("truncate", after_epoch)

    def update_progress(self, run_id: str, **progress: Any) -> None:
        super().update_progress(run_id, **progress)
        if run_id == self.run_id:
            self._send("progress", progress)

    def transition(self, run_id: str, expected: str, status: str, **options: Any) -> bool:
        changed = super().transition(run_id, expected, status, **options)
        if changed and run_id == self.run_id and status != expected:
            self._send("status", {"status": status, "error": options.get("error")})
        return changed

    def save_evaluation(self, run_id: str, split: str, summary: dict[str, Any], arrays: dict | None = None) -> None:
        super().save_evaluation(run_id, split, summary, arrays)
        if run_id == self.run_id:
            self._send("evaluation", {"split": split, "summary": summary, "arrays": arrays or {}}, wait=True)

    def flush(self) -> None:
        """Return once the relay has every message sent so far."""
        self._send("flush", None, wait=True)


def _seed_worker_registry(folder: Path, run_id: str, config: Any, state: dict[str, Any]) -> Path:
    """A temporary registry holding the run as the launcher has it: queued, with its stored
    epochs and checkpoint files (a resumed run continues from them). Returns its path."""
    path = folder / "registry.sqlite"
    seed = Registry(path)
    seed.create_run(config, status="queued", run_id=run_id)
    for row in state["epochs"]:
        seed.add_epoch(run_id, row["epoch"], {key: value for key, value in row.items() if key != "epoch"})
    checkpoints = seed.get_run(run_id).checkpoint_dir
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name, data in state["files"].items():
        atomic_write_bytes(checkpoints / name, data)
    return path


def _placement(config: Any, gpus: float) -> dict[str, Any]:
    """Where this task runs: node (host, IP, Ray node id) and device."""
    import ray

    from core.inference import describe_device, resolve_device

    context = ray.get_runtime_context()
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {context.get_node_id()[:8]})"
    try:
        device = describe_device(resolve_device(config.device))
    except RunError as error:
        device = f"none ({error})"
    if device.startswith("cuda") and gpus:
        ids = ",".join(str(gpu) for gpu in ray.get_gpu_ids())
        device += f", GPU {ids}" + (f", {gpus:g} of it" if gpus < 1 else "")
    return {"node": node, "device": device, "pid": os.getpid()}


def _train_on_worker(run_id: str, config_values: dict[str, Any], raw: Any, relay: Any, evaluate: bool,
                     gpus: float) -> dict[str, Any]:
    """The Ray task: train (and evaluate) one run on this worker; see the module docstring.

    Returns ``{"status", "error", "summary"}``; every result travelled to the launcher through
    the relay before this returns.
    """
    import ray

    # ray.cancel interrupts a running task by simulating SIGINT, which Python ignores when the
    # worker inherited SIGINT ignored (a launcher started in the background, with nohup...).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # no GPU share: never touch a GPU (before torch starts CUDA)
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    with tempfile.TemporaryDirectory(prefix="unetlab-ray-") as temporary:
        folder = Path(temporary)
        # This process trains this one run and then exits (max_calls=1): its settings are its own.
        os.environ["UNETLAB_CHECKPOINTS"] = str(folder / "checkpoints")
        import torch

        from core.config import RunConfig
        from core.datasets.registry import provided_dataset
        from core.lifecycle import train_then_evaluate

        config = RunConfig.from_dict(config_values)
        if not config.threads:
            torch.set_num_threads(max(1, int(cpus)))  # what Ray gave this task (the local queue: every core)
        attempt, state = ray.get(relay.start_attempt.remote(run_id, _placement(config, gpus)))
        registry = ForwardingRegistry(_seed_worker_registry(folder, run_id, config, state), relay, run_id, attempt)
        data = (nullcontext() if raw is None else
                provided_dataset(config.dataset, config.root, "train", config.image_size, raw))
        try:
            with data:
                outcome = train_then_evaluate(run_id=run_id, registry=registry, evaluate=evaluate,
                                              show_progress=False, mirror=False)  # the launcher mirrors
            result = {"status": outcome.status, "error": None, "summary": outcome.summary()}
        except KeyboardInterrupt:  # ray.cancel
            result = {"status": "cancelled", "error": "cancelled on request", "summary": None}
        except BaseException as error:
            stored = registry.get_run(run_id).error
            result = {"status": "failed", "error": stored or failure_cause(error), "summary": None}
        registry.flush()
        return result


# --------------------------------------------------------------------------------------
# The launcher side
# --------------------------------------------------------------------------------------

_REMOTES: dict[str, Any] = {}


def _remote(name: str):
    """The Ray-wrapped task or actor class (wrapped once per process, on first use)."""
    ray = import_ray()
    if name not in _REMOTES:
        # A fresh worker process per run (max_calls=1): device, threads and GPU memory are its own.
        _REMOTES["task"] = ray.remote(max_calls=1)(_train_on_worker)
        _REMOTES["relay"] = ray.remote(_Relay)
    return _REMOTES[name]


class _StopAll(Exception):
    """The launching process was asked to stop (SIGTERM without a pending cancel request)."""


@dataclass
class _Task:
    run_id: str
    reference: Any
    cancelled_at: float | None = None
    stop_reason: str | None = None  # why the launcher cancelled it
    failed: bool = False  # cancelled because the launcher could not store its results: the run fails
    attempt: int = 0
    reported: dict[str, Any] = field(default_factory=dict)  # the last failed/cancelled status it sent


class RayExecutor:
    """Submits runs this process owns as Ray tasks and writes what they send into the registry.

    Usage: ``submit(run_id)`` for each run (``running``, owned by this process: see
    :func:`take_over`), then :meth:`run` until they have ended; :meth:`close` at the end.
    """

    def __init__(self, registry: Registry, options: RayOptions | None = None, echo: bool = False):
        self.ray = import_ray()
        self.registry = registry
        self.options = (options or RayOptions()).validate()
        self.echo = echo  # print each epoch's scores and each retry (single runs)
        self.pid = os.getpid()
        self.owns_connection = connect(self.options)
        self.cpus_per_run = default_cpus_per_run(self.options)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = self.ray.get_runtime_context().get_node_id()
        self.relay = _remote("relay").options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self.tasks: dict[str, _Task] = {}
        self.results: dict[str, dict[str, Any]] = {}  # run id -> what its task returned
        self._datasets: dict[tuple, Any] = {}  # provided_key -> object reference
        self._signalled = False
        self._request_honoured_at = 0.0

    # ---- submitting ---------------------------------------------------------------------

    def describe(self) -> str:
        resources = self.ray.cluster_resources()
        nodes = sum(1 for node in self.ray.nodes() if node.get("Alive"))
        where = (f"the Ray cluster at {self.options.cluster_address()}" if self.options.cluster_address()
                 else "a local Ray instance")
        gpus = f", {self.options.gpus_per_run:g} GPU" if self.options.gpus_per_run else ""
        return (f"{where}: {nodes} node{'s' if nodes != 1 else ''}, {resources.get('CPU', 0):g} CPUs, "
                f"{resources.get('GPU', 0):g} GPUs; each run asks for {self.cpus_per_run:g} CPU{gpus}")

    def _dataset(self, config: Any) -> Any:
        """The run's decoded training arrays in the object store (put once per dataset and size)."""
        from core.datasets import load_dataset
        from core.datasets.registry import provided_key

        key = provided_key(config.dataset, config.root, "train", config.image_size)
        if key not in self._datasets:
            dataset = load_dataset(config.dataset, config.root, split="train", size=config.image_size)
            self._datasets[key] = self.ray.put(dataset.raw_data())
        return self._datasets[key]

    def submit(self, run_id: str, evaluate: bool = True) -> None:
        """Send run ``run_id`` (``running`` and owned by this process) to Ray."""
        record = self.registry.get_run(run_id)
        if record.status not in ACTIVE_STATUSES or record.pid != self.pid:
            raise RunError(f"run {run_id} is {record.status} (process {record.pid}); the launcher submits only "
                           "runs it owns")
        files = {name: (record.checkpoint_dir / name).read_bytes()
                 for name in CHECKPOINT_FILES if (record.checkpoint_dir / name).is_file()}
        state = {"epochs": self.registry.epochs(run_id), "files": files}
        raw = None if self.options.data_on_nodes else self._dataset(record.config)
        self.ray.get(self.relay.begin.remote(run_id, state))
        gpus = float(self.options.gpus_per_run)
        reference = _remote("task").options(
            num_cpus=self.cpus_per_run, num_gpus=gpus, max_retries=self.options.max_retries,
            retry_exceptions=False, name=f"unetlab-train-{run_id}",
        ).remote(run_id, record.config.to_dict(), raw, self.relay, evaluate, gpus)
        self.tasks[run_id] = _Task(run_id, reference)
        self.registry.set_placement(run_id, executor="ray")
        self.registry.update_progress(run_id, phase="waiting for Ray",
                                      waiting=f"waiting for a Ray worker with {self.cpus_per_run:g} CPU"
                                              + (f" and {gpus:g} GPU" if gpus else ""))

    # ---- following ----------------------------------------------------------------------

    def poll(self) -> list[str]:
        """Wait up to ``poll_seconds`` for tasks to end; apply what arrived; honour cancel
        requests. Returns the runs whose task ended."""
        references = [task.reference for task in self.tasks.values()]
        if references:
            ready, _ = self.ray.wait(references, num_returns=len(references), timeout=self.options.poll_seconds,
                                     fetch_local=False)
        else:
            ready = []
            time.sleep(self.options.poll_seconds)
        self._apply(self.ray.get(self.relay.drain.remote()))
        ended = []
        done = set(ready)
        for run_id, task in list(self.tasks.items()):
            if task.reference in done:
                self._complete(task)
                ended.append(run_id)
        self._honour_cancel_requests()
        return ended

    def run(self, run_ids: Sequence[str], show_progress: bool = False, label: str = "study") -> dict[str, str]:
        """Follow until every run of ``run_ids`` has ended (those submitted here, and any other
        process's runs among them), with a progress bar; return their statuses.

        Ctrl-C or SIGTERM (one that is not a ``cancel RUN_ID``) cancels this executor's runs,
        which stay resumable, and raises KeyboardInterrupt.
        """
        from tqdm import tqdm

        run_ids = list(run_ids)
        bar = tqdm(total=len(run_ids), unit="run", disable=not show_progress, dynamic_ncols=True, desc=label,
                   bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]")
        restore = self._handle_sigterm()
        try:
            wanted = set(run_ids)
            while True:
                live = {record.id for record in self.registry.list_runs(status=("queued", *ACTIVE_STATUSES))} & wanted
                running = sum(1 for task in self.tasks.values() if task.attempt)
                waiting = len(self.tasks) - running
                others = len(live - set(self.tasks))  # runs of this plan that other processes train
                bar.n = len(wanted - live - set(self.tasks))
                bar.set_postfix_str(f"{running} training on Ray, {waiting} waiting for resources"
                                    + (f", {others} in other processes" if others else ""), refresh=True)
                if not self.tasks and not others:
                    break
                self.poll()
        except (KeyboardInterrupt, _StopAll) as error:
            why = ("interrupted (Ctrl-C) in the launching process" if isinstance(error, KeyboardInterrupt)
                   else "the launching process was asked to stop (SIGTERM)")
            self.stop_all(why)
            raise KeyboardInterrupt(why) from None
        finally:
            restore()
            bar.close()
        self.registry.reap_dead(run_ids)
        return {run_id: self.registry.get_run(run_id).status for run_id in run_ids}

    def _handle_sigterm(self):
        """While following: SIGTERM is either ``cancel RUN_ID`` racing a run's start (its request
        is in the registry) or a request to stop this process (see :meth:`poll`)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(*_: Any) -> None:
            self._signalled = True

        previous = signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, previous)

    # ---- applying what the tasks sent ----------------------------------------------------

    def _apply(self, messages: list[tuple[str, str, Any]]) -> None:
        last_progress = {run_id: index for index, (run_id, kind, _) in enumerate(messages) if kind == "progress"}
        for index, (run_id, kind, payload) in enumerate(messages):
            if kind == "progress" and last_progress.get(run_id) != index:
                continue  # only the latest progress of a run matters
            try:
                self._apply_one(run_id, kind, payload)
            except (UNetLabError, OSError) as error:  # e.g. a full disk: this run fails, the others go on
                self._stop_task(run_id, f"the launcher could not store what the run sent: {error}", failed=True)

    def _apply_one(self, run_id: str, kind: str, payload: Any) -> None:
        registry, task = self.registry, self.tasks.get(run_id)
        if kind == "started":
            if task is not None:
                task.attempt = payload["attempt"]
            started = time.time() if payload["attempt"] == 1 else None  # it waited for resources until now
            registry.set_placement(run_id, executor="ray", node=payload["node"], device=payload["device"],
                                   started=started)
            registry.update_progress(run_id, phase="starting", attempt=payload["attempt"], node=payload["node"])
            if payload["attempt"] > 1:
                epochs = registry.epochs(run_id)
                self._say(f"run {run_id}: attempt {payload['attempt']} on {payload['node']} (the previous "
                          f"worker was lost); it resumes after epoch {epochs[-1]['epoch'] if epochs else 0}")
        elif kind == "epoch":
            folder = registry.get_run(run_id).checkpoint_dir
            for name, data in payload["files"].items():  # before the row: an epoch never lacks its checkpoint
                atomic_write_bytes(folder / name, data)
            registry.add_epoch(run_id, payload["epoch"], payload["metrics"])
            metrics = payload["metrics"]
            if payload["epoch"] >= 1 and "val_f1" in metrics and "train_loss" in metrics:
                self._say(f"run {run_id}: epoch {payload['epoch']}: train loss {metrics['train_loss']:.4f}  "
                          f"val F1 {metrics['val_f1']:.4f}")
        elif kind == "truncate":
            registry.truncate_epochs(run_id, payload)
        elif kind == "progress":
            attempt = {"attempt": task.attempt} if task is not None and task.attempt > 1 else {}
            registry.update_progress(run_id, **payload, **attempt)
        elif kind == "evaluation":
            registry.save_evaluation(run_id, payload["split"], payload["summary"], payload["arrays"] or None)
        elif kind == "status":
            self._apply_status(run_id, payload["status"], payload.get("error"))

    def _apply_status(self, run_id: str, status: str, error: str | None) -> None:
        """Mirror the worker's life cycle: ``evaluating`` and ``finished`` as they happen (checked
        as the local life cycle checks them); failed or cancelled are settled when the task ends."""
        registry, current = self.registry, self.registry.get_run(run_id).status
        if status == "evaluating" and current == "running":
            registry.finish_training(run_id, then_evaluate=True, pid=self.pid)
        elif status == "finished" and current == "running":
            registry.finish_training(run_id, then_evaluate=False, pid=self.pid)
        elif status == "finished" and current == "evaluating":
            if registry.get_evaluation(run_id, "val") is None:
                registry.end_attempt(run_id, "failed", pid=self.pid,
                                     error="the worker finished the run but its evaluation never arrived")
            else:
                registry.transition(run_id, "evaluating", "finished", owner=self.pid)
        elif status in ("failed", "cancelled") and run_id in self.tasks:
            self.tasks[run_id].reported = {"status": status, "error": error}

    def _complete(self, task: _Task) -> None:
        """A task ended: settle its run, then mirror it to MLflow from this (the launcher's) registry
        when ``UNETLAB_MLFLOW_URI`` is set (a failure there is a warning)."""
        from core.tracking import mirror_run

        try:
            self._settle(task)
        finally:
            mirror_run(task.run_id, self.registry)

    def _settle(self, task: _Task) -> None:
        """A task ended (returned, raised, was cancelled or lost its retries): settle its run."""
        ray = self.ray
        del self.tasks[task.run_id]
        try:
            result = ray.get(task.reference)
        except ray.exceptions.TaskCancelledError:
            result = {"status": "cancelled", "error": task.stop_reason or "cancelled on request"}
        except ray.exceptions.RayTaskError as error:
            result = {"status": "failed", "error": f"the Ray task failed: {error}"}
        except ray.exceptions.RayError as error:  # the worker or its node died and no retry was left
            result = {"status": "failed",
                      "error": f"the Ray worker training it was lost ({type(error).__name__}) after "
                               f"{max(task.attempt, 1)} attempt(s) ({self.options.max_retries} retries allowed): "
                               f"{str(error).splitlines()[0][:300]}; resume the run to continue from its last.pt"}
        self._apply(ray.get(self.relay.drain.remote()))  # what it sent last (already all there: it flushed)
        self.relay.forget.remote(task.run_id)
        self.results[task.run_id] = result
        summary = result.get("summary")
        record = self.registry.get_run(task.run_id)
        if summary:
            summary["checkpoint_dir"] = str(record.checkpoint_dir)  # the worker's folder was temporary
        if record.status not in ACTIVE_STATUSES or record.pid != self.pid:
            return  # finished (mirrored as it happened), or no longer this process's
        if task.failed:
            status, error = "failed", task.stop_reason
        elif task.stop_reason or record.cancel_requested:
            status, error = "cancelled", task.stop_reason or "cancelled on request; resume the run to continue"
        elif result["status"] == "finished":
            status, error = "failed", "the worker finished the run, but its results did not all reach the launcher"
        else:
            status = "cancelled" if result["status"] == "cancelled" else "failed"
            error = task.reported.get("error") or result.get("error")
            if status == "failed" and error and not error.startswith("the Ray"):
                error = f"on {record.node or 'a Ray worker'}: {error}"
        self.registry.end_attempt(task.run_id, status, error=error, pid=self.pid)

    # ---- cancelling ---------------------------------------------------------------------

    def _stop_task(self, run_id: str, reason: str, failed: bool = False) -> None:
        task = self.tasks.get(run_id)
        if task is None:
            return
        if task.cancelled_at is None:
            task.cancelled_at, task.stop_reason, task.failed = time.time(), reason, failed
        self.ray.cancel(task.reference)

    def _honour_cancel_requests(self) -> None:
        """Cancel the tasks whose run got a cancel request (or is no longer this process's)."""
        signalled, self._signalled = self._signalled, False
        active = {record.id: record for record in self.registry.list_runs(status=ACTIVE_STATUSES)}
        for run_id, task in list(self.tasks.items()):
            record = active.get(run_id)
            if task.cancelled_at is not None:
                if time.time() - task.cancelled_at > FORCE_CANCEL_AFTER:
                    self.ray.cancel(task.reference, force=True)  # it did not stop: end its worker process
                    task.cancelled_at = time.time()
                continue
            if record is None or record.pid != self.pid:
                self._stop_task(run_id, "the run was changed by another process while it trained on Ray")
            elif record.cancel_requested:
                self._stop_task(run_id, "cancelled on request; resume the run to continue from its last.pt")
                self._request_honoured_at = time.time()
        # `cancel RUN_ID` signals a Ray run's launcher only if it catches the run in the instant
        # between its claim and its marking as a Ray run, and writes its request first: a SIGTERM
        # that comes with no fresh request was meant for this process.
        if signalled and time.time() - self._request_honoured_at > 2.0:
            raise _StopAll()

    def stop_all(self, reason: str, wait_seconds: float = 20.0) -> None:
        """Cancel every task of this executor and settle their runs as cancelled (resumable)."""
        for run_id in list(self.tasks):
            self._stop_task(run_id, f"{reason}; resume the run to continue from its last.pt")
        deadline = time.time() + wait_seconds
        while self.tasks and time.time() < deadline:
            try:
                self.poll()
            except _StopAll:
                continue
        for run_id, task in list(self.tasks.items()):
            self.ray.cancel(task.reference, force=True)
            del self.tasks[run_id]
            self.registry.end_attempt(run_id, "cancelled", error=task.stop_reason, pid=self.pid)

    def close(self) -> None:
        """Stop anything still running, remove the relay and disconnect if this executor connected."""
        try:
            if self.tasks:
                self.stop_all("the launcher closed")
            self.ray.kill(self.relay)
        finally:
            if self.owns_connection:
                self.ray.shutdown()

    def _say(self, text: str) -> None:
        if self.echo:
            from tqdm import tqdm

            tqdm.write(text)


# --------------------------------------------------------------------------------------
# Taking runs over, and the two entry points (a study plan, one run)
# --------------------------------------------------------------------------------------


def take_over(registry: Registry, config: Any = None, run_id: str | None = None,
              action: str = "queue") -> tuple[str, bool]:
    """Make this process the owner of a run to train it on Ray; ``(run id, True)``, or
    ``(run id, False)`` when another live process owns it (its end is waited for) or there is
    nothing to do (``skip``).

    ``action`` is a study plan's (see :class:`core.study.PlannedRun`): ``queue`` creates the run
    (owned by this process); ``resume``, ``wait`` and ``evaluate`` claim it with the registry's
    compare-and-set (a queued run the local worker takes first is left to it).
    """
    if action == "skip":
        return str(run_id), False
    if action == "queue" or run_id is None:
        return registry.create_run(config, status="running"), True
    check_run_id(run_id)
    if action == "evaluate":
        try:
            registry.set_status(run_id, "queued")  # finished but not evaluated: train nothing, evaluate
        except RunError:
            pass  # someone else queued or took it: the claim below decides
    try:
        registry.claim(run_id)
    except RunError:
        return run_id, False
    return run_id, True


@contextmanager
def executor_for(registry: Registry, options: RayOptions | None, echo: bool = False) -> Iterator[RayExecutor]:
    executor = RayExecutor(registry, options, echo=echo)
    try:
        yield executor
    finally:
        executor.close()


def run_plan(plan: Sequence[Any], registry: Registry, options: RayOptions | None = None,
             show_progress: bool = True, label: str = "study",
             announce=None) -> tuple[list[str], dict[str, str]]:
    """Carry out a study plan on Ray (see :func:`core.study.plan_study`): every cell not
    skipped is taken over and submitted (or, if another live process owns it, waited for).
    ``announce(text)`` is told where the runs go before they start.

    Returns the run id of every cell (plan order) and the final status of each.
    """
    with executor_for(registry, options) as executor:
        if announce is not None:
            announce(executor.describe())
        run_ids = []
        for item in plan:
            run_id, mine = take_over(registry, item.config, item.run_id, item.action)
            item.run_id = run_id
            run_ids.append(run_id)
            if mine:
                try:
                    executor.submit(run_id)
                except UNetLabError as error:  # e.g. its data cannot be loaded: this run fails, the rest go on
                    registry.end_attempt(run_id, "failed", error=f"could not be sent to Ray: {error}")
        statuses = executor.run(run_ids, show_progress=show_progress, label=label)
    return run_ids, statuses


def train_one(config: Any = None, run_id: str | None = None, registry: Registry | None = None,
              options: RayOptions | None = None, evaluate: bool = True, show_progress: bool = True,
              announce=None) -> tuple[str, str, dict[str, Any] | None, str | None]:
    """Train (and evaluate) one new run from ``config``, or resume run ``run_id``, on Ray.

    Returns (run id, final status, the ``train --json`` summary or None, error or None).

    Raises
    ------
    RunError
        If the run cannot be taken (another live process trains it, it is finished...).
    """
    registry = registry or Registry()
    with executor_for(registry, options, echo=show_progress) as executor:
        if announce is not None:
            announce(executor.describe())
        if run_id is None:
            run_id = registry.create_run(config, status="running")
        else:
            registry.claim(check_run_id(run_id))
        try:
            executor.submit(run_id, evaluate=evaluate)
        except UNetLabError as error:
            registry.end_attempt(run_id, "failed", error=f"could not be sent to Ray: {error}")
            raise
        status = executor.run([run_id], label="run")[run_id]
        result = executor.results.get(run_id, {})
    record = registry.get_run(run_id)
    return run_id, status, result.get("summary"), record.error


__all__ = ["ADDRESS_VARIABLE", "ForwardingRegistry", "RayExecutor", "RayOptions", "connect", "default_cpus_per_run",
           "import_ray", "run_plan", "take_over", "train_one"]
