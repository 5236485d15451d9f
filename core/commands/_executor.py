"""The ``--executor`` options of ``train`` and ``study run``, and what they do with ``--executor ray``
(see :mod:`core.ray_executor`). The local queue stays the default; nothing here imports ``ray``
until the Ray executor is used."""

from __future__ import annotations

import argparse
import json


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "executor", "where the runs train: this machine's queue (default) or Ray, on this machine or a cluster")
    group.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: the training queue of this machine (default); ray: one Ray task per run")
    group.add_argument("--address", metavar="HOST:PORT",
                       help="Ray: join the cluster at this address (`ray start --head` prints it; default: "
                            "$UNETLAB_RAY_ADDRESS, else a local Ray instance is started)")
    group.add_argument("--cpus-per-run", type=float, metavar="N",
                       help="Ray: CPUs each run asks for (default: 1 with --gpus-per-run, else every core of "
                            "the smallest node: one run per machine, as the local queue trains)")
    group.add_argument("--gpus-per-run", type=float, default=0.0, metavar="G",
                       help="Ray: GPUs each run asks for; fractions share a GPU, e.g. 0.25 (default 0: the CPU)")
    group.add_argument("--max-retries", type=int, default=3, metavar="N",
                       help="Ray: times a run's task is started again after its worker or node died; it resumes "
                            "from its last whole epoch (default 3)")
    group.add_argument("--data-on-nodes", action="store_true",
                       help="Ray: workers read the dataset from its folder, a path every node has, instead of "
                            "receiving the arrays from this machine")
    group.add_argument("--ray-cpus", type=int, metavar="N",
                       help="Ray without --address: CPUs of the local Ray instance (default: every core)")


RAY_ONLY = {"address": None, "cpus_per_run": None, "gpus_per_run": 0.0, "max_retries": 3, "data_on_nodes": False,
            "ray_cpus": None}


def ray_options(args: argparse.Namespace):
    """The RayOptions the arguments give; UNetLabError if Ray options come without ``--executor ray``."""
    from core.errors import UNetLabError

    if args.executor != "ray":
        given = [f"--{name.replace('_', '-')}" for name, default in RAY_ONLY.items() if getattr(args, name) != default]
        if given:
            raise UNetLabError(f"{', '.join(given)} only apply with --executor ray")
        return None
    from core.ray_executor import RayOptions

    return RayOptions(address=args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                      max_retries=args.max_retries, data_on_nodes=args.data_on_nodes,
                      local_cpus=args.ray_cpus).validate()


def run_study_on_ray(args: argparse.Namespace, name: str, plan, registry, counts: dict[str, int]) -> int:
    """``study run --executor ray``: this process is the worker; it returns when the study's runs end."""
    from core.errors import UNetLabError
    from core.ray_executor import run_plan
    from core.study import study_progress
    from core.tables import format_duration

    options = ray_options(args)
    if not args.wait:
        raise UNetLabError("--no-wait does not apply with --executor ray: the launching process streams the runs' "
                           "results into the registry, so it stays until they end")
    if args.max_parallel:
        print("note: --max-parallel is not used with --executor ray (runs train as Ray's resources allow)")
    print(f"study {name}: {len(plan)} runs: {counts['queue']} new, {counts['resume']} resumed, "
          f"{counts['evaluate']} to be evaluated, {counts['wait']} queued or running before, "
          f"{counts['skip']} finished (skipped)", flush=True)
    try:
        run_ids, _ = run_plan(plan, registry, options, show_progress=True, label=f"study {name}",
                              announce=lambda text: print(f"training on {text}", flush=True))
    except KeyboardInterrupt as stopped:
        print(f"\n{stopped or 'interrupted'}: the study's runs on Ray were cancelled and can be resumed with "
              f"`python -m core study run --name {name} --executor ray` (or without it, on this machine's queue)")
        return 130
    progress = study_progress(run_ids, registry)
    print(f"study {name}: {progress.finished} finished, {progress.failed} failed, {progress.cancelled} cancelled"
          + (f"; mean run time {format_duration(progress.mean_run_seconds)}" if progress.mean_run_seconds else ""))
    if progress.failed or progress.cancelled:
        print(f"rerun `python -m core study run --name {name} --executor ray` to resume the stopped runs "
              f"(`python -m core study status {name}` shows their errors)")
        return 1
    return 0


def train_on_ray(args: argparse.Namespace, config) -> int:
    """``train --executor ray``: one run (new, or ``--resume ID``) as a Ray task, followed here."""
    from core.ray_executor import train_one

    options = ray_options(args)
    try:
        run_id, status, summary, error = train_one(
            config, run_id=args.resume, options=options, evaluate=args.evaluate, show_progress=not args.quiet,
            announce=None if args.quiet else (lambda text: print(f"training on {text}", flush=True)))
    except KeyboardInterrupt as stopped:
        print(f"\n{stopped or 'interrupted'}: the run was cancelled; resume it with "
              "`python -m core train --resume RUN_ID --executor ray`")
        return 130
    if args.json:
        print(json.dumps(summary or {"run_id": run_id, "status": status, "error": error}))
    elif summary:
        validation = summary.get("validation") or {}
        print(f"run {run_id}: {status} after {summary['epochs_done']} epochs in {summary['seconds']:.0f} s")
        if validation:
            from core.config import BEST_BY

            best_by = BEST_BY[summary.get("best_by", "val_f1")]
            print(f"validation pixel F1: {validation['val_f1']:.4f}; best {best_by} {summary['best_validation_f1']:.4f} "
                  f"at epoch {summary['best_epoch']}")
        if summary.get("stop_reason"):
            print(summary["stop_reason"])
        print(f"checkpoints: {summary['checkpoint_dir']}")
    else:
        print(f"run {run_id}: {status}" + (f": {error}" if error else ""))
    return 0 if status == "finished" else 1
