"""The Ray executor (core/ray_executor.py): the same runs and results as the local queue, results
streamed back while a remote run trains, cancel and resume, a node lost mid-run, a launcher that died.

Everything stays on localhost: a local Ray instance (``ray.init(num_cpus=2)``) or a simulated
cluster (``ray.cluster_utils.Cluster``, several raylets on this machine). Runs are tiny.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from core.config import RunConfig
from core.runs import Registry

ray = pytest.importorskip("ray")

TINY = dict(dataset="synthetic-nuclei", train_fraction=0.5, epochs=2, steps_per_epoch=3, batch_size=2, patch_size=64,
            depth=3, base_width=8, threads=1)
#: Long enough (in epochs; ~0.15 s each) for a cancel or a node kill to land while it trains.
LONG = dict(TINY, epochs=30)
#: Per-epoch values that measure time, not what was computed.
TIMINGS = ("train_seconds", "epoch_seconds", "patches_per_second")


def tiny(**changes) -> RunConfig:
    return RunConfig(**{**TINY, **changes}).validate()


def computed(rows: list[dict]) -> list[dict]:
    """Epoch rows without their timings."""
    return [{key: value for key, value in row.items() if key not in TIMINGS} for row in rows]


def scores(summary: dict) -> dict:
    """An evaluation summary without what differs between two identical runs (id, time)."""
    return {key: value for key, value in summary.items() if key not in ("run_id", "seconds", "created")}


def wait_until(condition, executor, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        executor.poll()


def init_options(tmp_path_factory) -> dict:
    """ray.init settings: quiet, and any stray worker write goes to a temporary folder."""
    base = tmp_path_factory.mktemp("ray-workers")
    return dict(logging_level=logging.WARNING, log_to_driver=False,
                runtime_env={"env_vars": {"UNETLAB_CACHE": str(base / "cache"),
                                          "UNETLAB_CHECKPOINTS": str(base / "checkpoints")}})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted LONG run trained in this process: what an interrupted one must end with."""
    from core.lifecycle import train_then_evaluate

    base = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNETLAB_CHECKPOINTS", str(base / "checkpoints"))
        registry = Registry(base / "registry.sqlite")
        outcome = train_then_evaluate(RunConfig(**LONG).validate(), registry=registry, show_progress=False)
        run_id = outcome.result.run_id
        return {"epochs": computed(registry.epochs(run_id)),
                "evaluation": scores(registry.get_evaluation(run_id, "val"))}


# --------------------------------------------------------------------------------------
# Without a Ray instance
# --------------------------------------------------------------------------------------


def test_ray_is_imported_only_by_the_ray_executor():
    code = ("import sys, core.cli, core.queue, core.study, core.ray_executor, core.commands._executor;"
            "core.cli.build_parser(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_ray_options_need_executor_ray(capsys):
    from core.cli import main

    assert main(["train", "--epochs", "1", "--gpus-per-run", "0.5"]) == 2
    assert "--gpus-per-run only apply with --executor ray" in capsys.readouterr().err


def test_registry_records_where_a_ray_run_trained(tmp_path):
    """Old registries gain the columns; a new attempt forgets the last one's placement."""
    import sqlite3

    path = tmp_path / "registry.sqlite"
    with sqlite3.connect(path) as db:  # a registry from before the placement columns
        db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, config TEXT NOT NULL, dataset TEXT NOT NULL, study TEXT,"
                   " status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, error TEXT,"
                   " pid INTEGER, checkpoint_dir TEXT NOT NULL, progress TEXT, heartbeat REAL)")
    registry = Registry(path)
    run_id = registry.create_run(tiny(), status="running")
    registry.set_placement(run_id, executor="ray", node="node-a (10.0.0.2)", device="cpu")
    record = registry.get_run(run_id)
    assert (record.executor, record.node, record.device) == ("ray", "node-a (10.0.0.2)", "cpu")
    from core.tables import TRAINED_ON_COLUMN, runs_table

    assert "node" in TRAINED_ON_COLUMN.lower()
    assert runs_table([record], {})[TRAINED_ON_COLUMN].tolist() == ["node-a (10.0.0.2), cpu, via Ray"]
    registry.set_status(run_id, "cancelled")
    registry.claim(run_id)  # a new attempt, e.g. resumed on this machine's queue
    record = registry.get_run(run_id)
    assert (record.executor, record.node, record.device) == (None, None, None)


# --------------------------------------------------------------------------------------
# A local Ray instance
# --------------------------------------------------------------------------------------


class TestLocalRay:
    @pytest.fixture(scope="class", autouse=True)
    def local_ray(self, tmp_path_factory):
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=2, include_dashboard=False, **init_options(tmp_path_factory))
        yield
        ray.shutdown()

    def test_grid_through_ray_matches_the_local_queue(self, tmp_path):
        """The same grid: same statuses, epochs, evaluations, checkpoints; the node is recorded."""
        import torch

        from core import queue
        from core.checkpoints import load_checkpoint
        from core.ray_executor import run_plan
        from core.study import PlannedRun

        configs = [tiny(augmentation=level, study="g") for level in ("none", "light")]
        local = Registry()
        local_ids = queue.enqueue(configs, local)
        assert set(queue.wait_for(local_ids, local, timeout=300).values()) == {"finished"}

        remote = Registry(tmp_path / "ray" / "registry.sqlite")
        ray_ids, statuses = run_plan([PlannedRun(config, "queue") for config in configs], remote, show_progress=False)
        assert set(statuses.values()) == {"finished"}
        for local_id, ray_id in zip(local_ids, ray_ids):
            a, b = local.get_run(local_id), remote.get_run(ray_id)
            assert a.config == b.config and b.status == "finished" and b.error is None
            assert computed(local.epochs(local_id)) == computed(remote.epochs(ray_id))
            assert scores(local.get_evaluation(local_id)) == scores(remote.get_evaluation(ray_id))
            arrays_a, arrays_b = local.evaluation_arrays(local_id), remote.evaluation_arrays(ray_id)
            assert arrays_a.keys() == arrays_b.keys()
            assert all((arrays_a[key] == arrays_b[key]).all() for key in arrays_a)
            for name in ("best.pt", "last.pt"):
                weights_a = load_checkpoint(a.checkpoint_dir / name)["state_dict"]
                weights_b = load_checkpoint(b.checkpoint_dir / name)["state_dict"]
                assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)
            assert a.executor == "local" and b.executor == "ray"
            assert "node" in b.node and b.device == "cpu"
            assert b.progress.get("phase") == "evaluated"
        assert Registry.check(remote.path).ok

    def test_remote_epochs_stream_back_then_cancel_and_resume(self, reference):
        """Epochs (and last.pt) reach the registry while the run trains; `cancel` stops the Ray
        task; resuming through Ray ends exactly where an uninterrupted run does."""
        from core import queue
        from core.ray_executor import RayExecutor, RayOptions, train_one

        registry = Registry()
        executor = RayExecutor(registry, RayOptions(poll_seconds=0.1))
        try:
            run_id = registry.create_run(RunConfig(**LONG), status="running")
            executor.submit(run_id)
            wait_until(lambda: len(registry.epochs(run_id)) >= 2, executor)  # epoch 0 and epoch 1
            record = registry.get_run(run_id)
            assert record.status == "running" and record.executor == "ray" and record.node
            assert record.last_checkpoint.is_file()
            assert queue.cancel(run_id, registry) == "cancelling"  # what `python -m core cancel` does
            wait_until(lambda: not executor.tasks, executor)
        finally:
            executor.close()
        record = registry.get_run(run_id)
        stopped_after = registry.epochs(run_id)[-1]["epoch"]
        assert record.status == "cancelled", record.error
        assert 1 <= stopped_after < LONG["epochs"], "the cancel did not land while the run trained"
        assert record.last_checkpoint.is_file()

        resumed_id, status, summary, error = train_one(run_id=run_id, registry=registry, show_progress=False)
        assert (resumed_id, status, error) == (run_id, "finished", None)
        assert summary["epochs_done"] == LONG["epochs"]
        assert computed(registry.epochs(run_id)) == reference["epochs"]
        assert scores(registry.get_evaluation(run_id)) == reference["evaluation"]

    def test_study_run_picks_up_runs_of_a_launcher_that_died(self, capsys):
        """A run owned by a launcher that is gone is reaped and resumed by `study run --executor ray`."""
        from core.cli import main
        from core.study import StudyDefinition, StudyGrid, save_study

        registry = Registry()
        overrides = {key: value for key, value in TINY.items() if key not in ("dataset", "train_fraction")}
        definition = StudyDefinition("d", [StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.5],
                                                     augmentations=["none"], seeds=[0], overrides=overrides)])
        save_study(definition, registry)
        (config,) = definition.configs()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        run_id = registry.create_run(config, status="running", pid=dead.pid)  # as a killed launcher leaves it
        registry.set_placement(run_id, executor="ray")
        assert main(["study", "run", "--name", "d", "--executor", "ray"]) == 0
        out = capsys.readouterr().out
        assert "1 resumed" in out and "1 finished, 0 failed" in out
        record = registry.get_run(run_id)
        assert record.status == "finished" and record.executor == "ray"
        assert registry.get_evaluation(run_id) is not None

    def test_train_command_with_the_ray_executor(self, capsys):
        from core.cli import main

        args = ["train", "--dataset", "synthetic-nuclei", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "2",
                "--patch-size", "64", "--depth", "3", "--width", "8", "--threads", "1", "--no-evaluate", "--json",
                "--quiet", "--executor", "ray", "--cpus-per-run", "1"]
        assert main(args) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        record = Registry().get_run(summary["run_id"])
        assert summary["status"] == record.status == "finished"
        assert summary["checkpoint_dir"] == str(record.checkpoint_dir) and record.best_checkpoint.is_file()
        assert record.executor == "ray" and Registry().get_evaluation(record.id) is None


# --------------------------------------------------------------------------------------
# A simulated cluster
# --------------------------------------------------------------------------------------


class TestCluster:
    @pytest.fixture(scope="class")
    def cluster(self, tmp_path_factory):
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, **init_options(tmp_path_factory))
        yield cluster
        ray.shutdown()
        cluster.shutdown()

    def test_cluster_node_killed_mid_run_loses_nothing(self, cluster, reference):
        """The node training a run is removed after epoch 1: Ray retries the task on the other node,
        which resumes from the last whole epoch and ends with an uninterrupted run's metrics."""
        from core.ray_executor import RayExecutor, RayOptions

        registry = Registry()
        executor = RayExecutor(registry, RayOptions(poll_seconds=0.1, max_retries=2))
        try:
            run_id = registry.create_run(RunConfig(**LONG), status="running")
            executor.submit(run_id)
            wait_until(lambda: len(registry.epochs(run_id)) >= 2, executor)
            first_node = registry.get_run(run_id).node
            (victim,) = [node for node in cluster.worker_nodes if f"node {node.node_id[:8]}" in first_node]
            cluster.remove_node(victim)
            wait_until(lambda: not executor.tasks, executor, timeout=300)
        finally:
            executor.close()
        record = registry.get_run(run_id)
        assert record.status == "finished", record.error
        assert record.progress.get("attempt") == 2, "the node was not removed while the run trained"
        assert record.node != first_node
        assert computed(registry.epochs(run_id)) == reference["epochs"]
        assert scores(registry.get_evaluation(run_id)) == reference["evaluation"]
        assert Registry.check(registry.path).ok
