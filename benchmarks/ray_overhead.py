"""What the Ray executor costs, and what it survives.

    python -m benchmarks.ray_overhead [--epochs 12] [--repeats 2] [--study-epochs 10] [--nodes 3]
                                      [--skip-single|--skip-cluster]

1. *Overhead*: the same run of about two minutes on this CPU (synthetic-nuclei, default settings:
   width 16, batch 8 of 256x256, 25 steps per epoch, ``--epochs`` epochs, then the evaluation)
   through the local queue (``core.queue``: a worker process starts the training process) and
   through the Ray executor on a local Ray instance (one task, every core), timed from launch to
   ``finished``; the start of the Ray instance is timed apart. Both must end with the same metrics.
   With ``--repeats N`` the two alternate N times (local, Ray, local, Ray...) and the medians are
   compared, so a machine that gets busier or quieter during the script favours neither.
2. *A node lost mid-study*: a 12-run study (fractions x levels x seeds, tiny settings) on a
   simulated cluster (``ray.cluster_utils.Cluster``: a head without CPUs and ``--nodes`` worker
   nodes of one CPU each, all on this machine); once a third of the runs have finished, the node
   training a run is removed. Every run must finish, with metrics identical to the same 12 runs
   trained by the local queue.

Prints a table. Everything runs on localhost, in a temporary folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

TIMINGS = ("train_seconds", "epoch_seconds", "patches_per_second")


def use_folders(base: Path) -> None:
    """Point the registry and checkpoints (also the local queue's worker processes) at ``base``."""
    os.environ["UNETLAB_CACHE"] = str(base / "cache")
    os.environ["UNETLAB_CHECKPOINTS"] = str(base / "checkpoints")


def results(registry, run_id: str) -> tuple:
    """What a run computed: epoch metrics without timings, and the evaluation's pixel scores."""
    epochs = [{k: v for k, v in row.items() if k not in TIMINGS} for row in registry.epochs(run_id)]
    evaluation = registry.get_evaluation(run_id, "val") or {}
    return epochs, evaluation.get("pixel"), evaluation.get("curves"), evaluation.get("instances")


def local_queue(configs, base: Path) -> tuple[list[str], float, object]:
    from core import queue
    from core.runs import Registry

    use_folders(base)
    registry = Registry()
    started = time.time()
    run_ids = queue.enqueue(configs, registry)
    statuses = queue.wait_for(run_ids, registry, timeout=7200, poll_seconds=0.2)
    seconds = time.time() - started
    assert set(statuses.values()) == {"finished"}, statuses
    return run_ids, seconds, registry


def single_run(epochs: int, repeats: int) -> list[tuple[str, str, str, str]]:
    import statistics

    import ray

    from core.config import RunConfig
    from core.ray_executor import RayOptions, connect, run_plan
    from core.runs import Registry
    from core.study import PlannedRun

    config = RunConfig(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="light", epochs=epochs).validate()
    base = Path(tempfile.mkdtemp(prefix="unetlab-ray-overhead-"))
    local_times, ray_times, init_times, same = [], [], [], True
    for repeat in range(repeats):
        (local_id,), seconds, local = local_queue([config], base / f"local-{repeat}")
        local_times.append(seconds)
        print(f"local queue: {seconds:.1f} s", flush=True)

        use_folders(base / f"ray-{repeat}")
        started = time.time()
        connect(RayOptions())
        init_times.append(time.time() - started)
        registry = Registry()
        started = time.time()
        (ray_id,), statuses = run_plan([PlannedRun(config, "queue")], registry, show_progress=False)
        ray_times.append(time.time() - started)
        ray.shutdown()
        assert statuses[ray_id] == "finished", registry.get_run(ray_id).error
        print(f"Ray: {ray_times[-1]:.1f} s (+ {init_times[-1]:.1f} s to start the instance)", flush=True)
        same = same and results(local, local_id) == results(registry, ray_id)
    f1 = registry.get_evaluation(ray_id, "val")["pixel"]["f1"]
    local_median, ray_median = statistics.median(local_times), statistics.median(ray_times)
    each = lambda times: ", ".join(f"{t:.1f}" for t in times)
    return [
        (f"one run, {epochs} epochs x 25 steps + evaluation, launch to finished (median of {repeats}; each: "
         f"local {each(local_times)}, Ray {each(ray_times)})",
         f"{local_median:.1f} s", f"{ray_median:.1f} s", f"{ray_median / local_median:.3f}"),
        ("starting the local Ray instance (once per launch)", "-", f"{statistics.median(init_times):.1f} s", "-"),
        ("same metrics (every epoch and the evaluation)", "", f"{'yes' if same else 'NO'} (pixel F1 {f1:.4f})", ""),
    ]


def cluster_study(epochs: int, n_nodes: int) -> list[tuple[str, str, str, str]]:
    import ray
    from ray.cluster_utils import Cluster

    from core.config import RunConfig
    from core.ray_executor import RayExecutor, RayOptions, take_over
    from core.runs import Registry
    from core.study import configs_for_grid

    base_config = RunConfig(dataset="synthetic-nuclei", epochs=epochs, steps_per_epoch=3, batch_size=2, patch_size=64,
                            depth=3, base_width=8, threads=1, study="c").validate()
    configs = configs_for_grid(base_config, [0.25, 0.5], ["none", "light", "heavy"], [0, 1], study="c")
    assert len(configs) == 12
    base = Path(tempfile.mkdtemp(prefix="unetlab-ray-cluster-"))
    local_ids, local_seconds, local = local_queue(configs, base / "local")
    print(f"local queue, 12 runs: {local_seconds:.1f} s", flush=True)

    use_folders(base / "ray")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(n_nodes)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    registry = Registry()
    executor = RayExecutor(registry, RayOptions(poll_seconds=0.2, max_retries=3))
    removed = None
    started = time.time()
    try:
        ray_ids = []
        for config in configs:
            run_id, _ = take_over(registry, config)
            executor.submit(run_id)
            ray_ids.append(run_id)
        while executor.tasks:
            executor.poll()
            finished = sum(registry.get_run(run_id).status == "finished" for run_id in ray_ids)
            if removed is None and finished >= len(configs) // 3:
                training = [registry.get_run(run_id) for run_id in executor.tasks]
                training = [record for record in training if record.node and len(registry.epochs(record.id)) >= 2]
                if training:
                    victim = next(node for node in nodes if f"node {node.node_id[:8]}" in training[0].node)
                    cluster.remove_node(victim)
                    removed = (time.time() - started, training[0].id)
                    print(f"removed the node training {training[0].id} after {removed[0]:.1f} s", flush=True)
        ray_seconds = time.time() - started
    finally:
        executor.close()
        ray.shutdown()
        cluster.shutdown()
    records = [registry.get_run(run_id) for run_id in ray_ids]
    finished = sum(record.status == "finished" for record in records)
    retried = [record.id for record in records if record.progress.get("attempt", 1) > 1]
    identical = sum(results(local, a) == results(registry, b) for a, b in zip(local_ids, ray_ids))
    return [
        (f"12-run study ({epochs} epochs, tiny), {n_nodes} nodes of 1 CPU, one removed at "
         f"{removed[0] if removed else float('nan'):.0f} s", f"{local_seconds:.1f} s", f"{ray_seconds:.1f} s",
         f"{ray_seconds / local_seconds:.3f}"),
        ("  runs finished / lost", "12 / 0", f"{finished} / {len(configs) - finished}", ""),
        ("  runs retried on another node (resumed from their last epoch)", "-", f"{len(retried)}", ""),
        ("  runs with metrics identical to the local queue's", "-", f"{identical} of 12", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=12, help="epochs of the ~2-minute run (default 12)")
    parser.add_argument("--repeats", type=int, default=2, help="local/Ray alternations of that run (default 2)")
    parser.add_argument("--study-epochs", type=int, default=10, help="epochs of each tiny study run (default 10)")
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes of the simulated cluster (default 3)")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.skip_single:
        rows += single_run(args.epochs, args.repeats)
    if not args.skip_cluster:
        rows += cluster_study(args.study_epochs, args.nodes)
    print()
    print("| what | local queue | Ray | Ray / local |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
