"""A run from start to end: train, then evaluate, then finish.

The statuses this walks through (see :mod:`core.runs`)::

    queued/failed/cancelled -> running -> evaluating -> finished
                                  |            |
                                  +------------+--> failed | cancelled

:func:`train_then_evaluate` is what ``python -m core train`` (and so the queue worker)
runs. Training ends in ``evaluating`` (or ``finished`` with ``evaluate=False``) only when
``best.pt`` exists; the evaluation is stored before the run becomes ``finished``. A
process that dies while evaluating leaves the run ``evaluating`` with a dead owner: the
reaper marks it failed, and resuming it (``last.pt`` is at the final epoch, so no epoch
is trained again) just evaluates it again.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from core.config import RunConfig
from core.errors import RunError
from core.evaluate import evaluate_run
from core.runs import Registry, failure_cause
from core.train import TrainResult, train_run


@dataclass
class RunOutcome:
    """What training (and evaluating) one run gave."""

    result: TrainResult
    evaluation: dict[str, Any] | None = None  # the evaluation's headline, when it ran

    @property
    def status(self) -> str:
        """The run's final status: ``finished``, ``cancelled`` (or ``failed``)."""
        return self.result.status

    def summary(self) -> dict[str, Any]:
        """The ``train --json`` line: the training summary, plus ``evaluation`` when evaluated."""
        summary = self.result.to_dict()
        if self.evaluation is not None:
            summary["evaluation"] = self.evaluation
        return summary


class EvaluationStopped(Exception):
    """SIGTERM arrived while the trained model was being evaluated."""


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While evaluating, SIGTERM (``cancel``) raises EvaluationStopped so the run ends cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(*_: Any) -> None:
        raise EvaluationStopped()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_then_evaluate(
    config: RunConfig | None = None,
    run_id: str | None = None,
    *,
    evaluate: bool = True,
    registry: Registry | None = None,
    show_progress: bool = True,
    from_worker: bool = False,
    mirror: bool = True,
) -> RunOutcome:
    """Train a new run from ``config`` (or continue run ``run_id``), then evaluate it.

    Parameters
    ----------
    config, run_id
        As :func:`core.train.train_run`: a new run, or an existing one to claim and resume.
    evaluate : bool
        Run and store the full evaluation (``running -> evaluating -> finished``); False
        goes ``running -> finished``.
    from_worker : bool
        The queue worker started this process and claimed the run for it.
    mirror : bool
        Mirror the run to MLflow when it ends, if ``UNETLAB_MLFLOW_URI`` is set (:mod:`core.tracking`;
        a failure there is a warning). A Ray worker passes False: its launcher mirrors the run.

    Raises
    ------
    RunError
        If the run cannot be claimed (another live process owns it, it was cancelled while
        the worker started this process...), or training ended without ``best.pt``.
        Any error while training or evaluating is recorded with the run (failed) and raised.
    """
    registry = registry or Registry()
    result = None
    try:
        result = train_run(config, run_id=run_id, registry=registry, show_progress=show_progress,
                           then_evaluate=evaluate, from_worker=from_worker)
        record_placement(registry, result.run_id)
        if not evaluate or result.status != "finished":
            return RunOutcome(result)
        headline = evaluate_trained_run(result.run_id, registry, show_progress)
        if headline is None:
            return RunOutcome(dataclasses.replace(result, status="cancelled"))
        return RunOutcome(result, headline)
    finally:
        # Mirrored however it ended (finished, cancelled, failed), from the registry's record of it.
        mirrored = result.run_id if result is not None else run_id
        if mirror and mirrored is not None:
            from core.tracking import mirror_run

            mirror_run(mirrored, registry)


def record_placement(registry: Registry, run_id: str) -> None:
    """Record that this machine trained the run (host name and device), unless an executor that
    trains elsewhere (Ray) already recorded where."""
    import socket

    from core.inference import describe_device, resolve_device

    record = registry.get_run(run_id)
    if record.executor not in (None, "local"):
        return
    try:
        device = describe_device(resolve_device(record.config.device))
    except RunError:
        device = record.config.device
    registry.set_placement(run_id, executor="local", node=socket.gethostname(), device=device)


def evaluate_trained_run(run_id: str, registry: Registry, show_progress: bool = True) -> dict[str, Any] | None:
    """The ``evaluating`` phase of a run this process owns: evaluate, store, then ``finished``.

    Returns the evaluation's headline, or None if SIGTERM stopped it (the run is then
    ``cancelled``; resuming it evaluates again). Any error marks the run failed with its
    cause and is raised.
    """
    owner = os.getpid()
    record = registry.get_run(run_id)
    if record.cancel_requested:  # a SIGTERM that came as training ended was absorbed: honour it now
        registry.end_attempt(run_id, "cancelled", pid=owner,
                             error="stopped on request before evaluating; resume the run to evaluate it")
        return None
    progress = record.progress
    registry.update_progress(run_id, **{**progress, "phase": "evaluating"})
    try:
        with _stop_on_sigterm():
            evaluation = evaluate_run(run_id, registry=registry, show_progress=show_progress)
    except EvaluationStopped:
        registry.end_attempt(run_id, "cancelled", pid=owner,
                             error="stopped on request while evaluating; resume the run to evaluate it again")
        return None
    except KeyboardInterrupt:
        registry.end_attempt(run_id, "cancelled", pid=owner, error="interrupted (Ctrl-C) while evaluating")
        raise
    except BaseException as error:
        registry.end_attempt(run_id, "failed", pid=owner, error=f"evaluation failed: {failure_cause(error)}")
        raise
    if registry.get_evaluation(run_id, "val") is None:
        reason = "the evaluation ended but was not stored in the registry"
        registry.end_attempt(run_id, "failed", pid=owner, error=reason)
        raise RunError(f"run {run_id}: {reason}")
    registry.update_progress(run_id, **{**progress, "phase": "evaluated"})
    if not registry.transition(run_id, "evaluating", "finished", owner=owner):
        raise RunError(f"run {run_id} was changed by another process while this process evaluated it "
                       f"(it is {registry.get_run(run_id).status} now)")
    return evaluation.headline()
