"""``python -m core worker``: the queue worker (normally started detached by the app or a study)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="start queued runs, N at a time (one worker per registry)")
    parser.add_argument("--max-parallel", type=int, help="runs trained at once (default: 1 on CPU, 1 per GPU)")
    parser.add_argument("--idle-exit", type=float, default=30.0,
                        help="exit after this many seconds with nothing queued or running")
    parser.set_defaults(handler=run)
    cancel = subparsers.add_parser("cancel", help="cancel a queued, running or evaluating run")
    cancel.add_argument("run_id")
    cancel.set_defaults(handler=run_cancel)
    resume = subparsers.add_parser("resume", help="queue a failed or cancelled run again (continues from last.pt)")
    resume.add_argument("run_id")
    resume.set_defaults(handler=run_resume)


def run(args: argparse.Namespace) -> int:
    from core.queue import run_worker

    started = run_worker(max_parallel=args.max_parallel, idle_exit_seconds=args.idle_exit)
    print(f"worker done: started {started} runs")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from core.queue import cancel

    print(f"run {args.run_id}: {cancel(args.run_id)}")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    from core.queue import resume

    resume(args.run_id)
    print(f"run {args.run_id}: queued again; the worker continues it from its last checkpoint")
    return 0
