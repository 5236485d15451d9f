"""Training runs end to end on a built-in synthetic set: learning, determinism, resume,
cancellation, checkpoint safety, the CLI and the queue."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from core.checkpoints import build_model_from_checkpoint, load_checkpoint
from core.config import RunConfig
from core.errors import CheckpointError, ConfigError
from core.paths import PROJECT_ROOT
from core.queue import cancel, enqueue, wait_for
from core.runs import Registry
from core.train import StopRequest, train_run

# Small enough for a few seconds per run on two CPU cores.
TINY = dict(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="light", steps_per_epoch=4,
            batch_size=4, patch_size=64, base_width=8, depth=3, tile_size=256, threads=2)


def test_training_beats_the_untrained_model():
    config = RunConfig(**{**TINY, "epochs": 3, "steps_per_epoch": 12, "patch_size": 128, "base_width": 16})
    result = train_run(config, show_progress=False)
    assert result.status == "finished" and result.epochs_done == 3
    trained, untrained = result.final_metrics["val_f1"], result.untrained_metrics["val_f1"]
    assert trained > untrained + 0.2, (trained, untrained)
    assert trained > 0.6
    registry = Registry()
    epochs = registry.epochs(result.run_id)
    assert [row["epoch"] for row in epochs] == [0, 1, 2, 3]
    assert registry.get_run(result.run_id).status == "finished"
    model, stored_config, payload = build_model_from_checkpoint(f"{result.checkpoint_dir}/best.pt")
    assert stored_config == config and payload["epoch"] == result.best_epoch


def test_same_seed_gives_identical_metrics():
    first = train_run(RunConfig(**TINY, epochs=2), show_progress=False)
    second = train_run(RunConfig(**TINY, epochs=2), show_progress=False)
    keys = ["val_loss", "val_f1", "train_loss", "val_tp", "val_fp"]
    assert [first.final_metrics[k] for k in keys] == [second.final_metrics[k] for k in keys]
    other_seed = train_run(RunConfig(**TINY, epochs=2, seed=1), show_progress=False)
    assert other_seed.final_metrics["train_loss"] != first.final_metrics["train_loss"]


def _core(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core", *args], cwd=PROJECT_ROOT, env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigterm_cancels_cleanly_and_resume_matches_uninterrupted_run():
    config = RunConfig(**{**TINY, "epochs": 3, "steps_per_epoch": 30})
    uninterrupted = train_run(config, show_progress=False)

    args = ["train", "--dataset", config.dataset, "--train-fraction", "0.5", "--augmentation", "light",
            "--epochs", "3", "--steps-per-epoch", "30", "--batch-size", "4", "--patch-size", "64",
            "--width", "8", "--depth", "3", "--threads", "2", "--quiet", "--no-evaluate", "--json"]
    process = _core(*args)
    registry = Registry()
    deadline = time.time() + 120
    run_id = None
    while time.time() < deadline:  # wait until epoch 1 is stored, then stop the run mid-epoch 2
        runs = registry.list_runs(status="running")
        if runs and any(row["epoch"] == 1 for row in registry.epochs(runs[0].id)):
            run_id = runs[0].id
            break
        time.sleep(0.05)
    assert run_id, "the run never finished its first epoch"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    record = registry.get_run(run_id)
    assert record.status == "cancelled"
    assert load_checkpoint(record.last_checkpoint)["epoch"] == 1  # intact, the last whole epoch

    resumed = _core("train", "--resume", run_id, "--quiet", "--no-evaluate", "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-500:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "finished"
    for key in ("val_loss", "val_f1", "train_loss"):
        assert summary["validation"][key] == pytest.approx(uninterrupted.final_metrics[key], abs=1e-6), key


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": Evil(), "config": {}}, handle)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a U-Net Lab checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_train_cli_prints_json_and_bad_fraction_is_a_clear_error():
    process = _core("train", "--dataset", "synthetic-nuclei", "--train-fraction", "0", "--json")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "train_fraction" in err and "Traceback" not in err
    process = _core("train", "--dataset", "synthetic-nuclei", "--train-fraction", "0.3", "--epochs", "1",
                    "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "64", "--width", "8",
                    "--depth", "3", "--quiet", "--no-evaluate", "--json")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-500:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "finished" and 0 <= summary["validation"]["val_f1"] <= 1
    assert Registry().get_run(summary["run_id"]).status == "finished"


def test_queue_worker_trains_queued_runs_and_cancels_queued_ones():
    registry = Registry()
    first, second = enqueue([RunConfig(**TINY, epochs=1), RunConfig(**TINY, epochs=1, seed=5)], registry,
                            start_worker=False)
    assert cancel(second, registry) == "cancelled"
    from core.queue import ensure_worker, worker_running

    assert ensure_worker(registry) is True
    statuses = wait_for([first], registry, timeout=300)
    assert statuses == {first: "finished"}
    assert registry.get_run(second).status == "cancelled"
    assert worker_running(registry)  # still idling, waiting for more work
    assert ensure_worker(registry) is False  # never a second worker


def test_parallel_setting_reaches_a_running_worker(tmp_path):
    from core.errors import RunError
    from core.queue import current_max_parallel, set_max_parallel

    registry = Registry(tmp_path / "registry.sqlite")
    assert current_max_parallel(registry, default=1) == 1  # nothing stored yet
    set_max_parallel(3, registry)
    assert current_max_parallel(registry, default=1) == 3  # the worker reads this every poll
    with pytest.raises(RunError, match="at least 1"):
        set_max_parallel(0, registry)
    assert current_max_parallel(registry, default=1) == 3


# ---- early stopping ----------------------------------------------------------------------


def test_early_stopping_rule_reads_the_stored_epochs():
    from core.train import early_stopping

    epochs = [{"epoch": 0, "val_f1": 0.9}] + [{"epoch": e, "val_f1": f} for e, f in
                                             enumerate([0.5, 0.6, 0.6, 0.55, 0.7, 0.65], start=1)]
    assert early_stopping(epochs[:4], None) == (2, None)  # no patience: never stops; epoch 0 is no candidate
    assert early_stopping(epochs[:4], 2) == (2, None)  # epoch 3 only equals the best: 1 epoch without improvement
    best, reason = early_stopping(epochs[:5], 2)
    assert best == 2 and reason == ("stopped early at epoch 4: no improvement of the validation pixel F1 for "
                                    "2 epochs (best epoch 2, patience 2)")
    assert early_stopping(epochs, 2) == (5, None)  # epoch 5 improved: one epoch since
    assert early_stopping(epochs[:1], 1) == (None, None)  # only the untrained model
    assert early_stopping([{"epoch": 1, "val_f1": float("nan")}], 1)[1].startswith("stopped early at epoch 1")
    # A minimum number of epochs: the same history does not stop at epoch 4 when at least 5 are required.
    assert early_stopping(epochs[:5], 2, min_epochs=5) == (2, None)
    assert early_stopping(epochs[:5], 2, min_epochs=4)[1].startswith("stopped early at epoch 4")
    # The collapse seen in the trust-redo study: F1 ~0 from epoch 2 on stops at epoch 8 with patience 6 ...
    collapsed = [{"epoch": e, "val_f1": f} for e, f in enumerate([0.19, 0.22, 0.02, 0.01, 0.0, 0.0, 0.0, 0.0], 1)]
    assert early_stopping(collapsed, 6)[1].startswith("stopped early at epoch 8")
    assert early_stopping(collapsed, 6, min_epochs=15) == (2, None)  # ... but not before a minimum of 15


class StopAfterEpoch(StopRequest):
    """Asks the run to stop at the end of ``epoch`` (the loop checks after each step and each epoch)."""

    def __init__(self, epoch: int, steps_per_epoch: int) -> None:
        self.calls, self.limit = 0, epoch * (steps_per_epoch + 1)

    @property
    def requested(self) -> bool:
        self.calls += 1
        return self.calls >= self.limit

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def scripted_validation(monkeypatch, scores: dict[int, float]) -> None:
    """Real training, but the validation pixel F1 of epoch e is ``scores[e]`` (read from the run's progress)."""
    import core.train

    real = core.train.validate

    def validate(*args, **kwargs):
        metrics = real(*args, **kwargs)
        (running,) = Registry().list_runs(status="running")
        return {**metrics, "val_f1": scores[int(running.progress.get("epoch") or 0)]}

    monkeypatch.setattr(core.train, "validate", validate)


def test_patience_stops_early_and_a_resumed_run_stops_where_an_uninterrupted_one_does(monkeypatch):
    scripted_validation(monkeypatch, {0: 0.1, 1: 0.5, 2: 0.6, 3: 0.6, 4: 0.55, 5: 0.9, 6: 0.9, 7: 0.9, 8: 0.9})
    config = RunConfig(**{**TINY, "epochs": 8, "steps_per_epoch": 2, "early_stopping_patience": 2})
    registry = Registry()
    whole = train_run(config, show_progress=False)
    assert whole.status == "finished" and whole.epochs_done == 4 and whole.best_epoch == 2
    assert whole.stopped_early and whole.stop_reason.startswith("stopped early at epoch 4: no improvement")
    assert whole.to_dict()["stop_reason"] == whole.stop_reason
    stored = registry.epochs(whole.run_id)
    assert [row["epoch"] for row in stored] == [0, 1, 2, 3, 4] and stored[-1]["note"] == whole.stop_reason
    record = registry.get_run(whole.run_id)
    assert record.progress["stop_reason"] == whole.stop_reason and record.progress["stopped_at_epoch"] == 4
    assert load_checkpoint(record.best_checkpoint)["epoch"] == 2

    interrupted = train_run(config, show_progress=False, stop=StopAfterEpoch(3, config.steps_per_epoch))
    assert interrupted.status == "cancelled" and interrupted.epochs_done == 3 and not interrupted.stopped_early
    resumed = train_run(run_id=interrupted.run_id, show_progress=False)
    assert resumed.status == "finished" and resumed.epochs_done == 4 and resumed.stop_reason == whole.stop_reason
    again = registry.epochs(resumed.run_id)
    keys = ("val_f1", "val_loss", "train_loss", "val_tp", "val_fp")
    assert [[row.get(k) for k in keys] for row in again] == [[row.get(k) for k in keys] for row in stored]
    first, second = (load_checkpoint(registry.get_run(r).last_checkpoint) for r in (whole.run_id, resumed.run_id))
    assert all(torch.equal(first["state_dict"][name], second["state_dict"][name]) for name in first["state_dict"])

    # A finished run queued again (as a study does to re-evaluate it) after it stopped early trains no further.
    registry.set_status(whole.run_id, "queued")
    finished_again = train_run(run_id=whole.run_id, show_progress=False)
    assert finished_again.epochs_done == 4 and finished_again.stop_reason == whole.stop_reason
    assert [row["epoch"] for row in registry.epochs(whole.run_id)] == [0, 1, 2, 3, 4]


def test_patience_is_validated_and_reaches_the_config_from_the_cli():
    from core.commands.train import config_from_args, register
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="early_stopping_patience"):
        RunConfig(early_stopping_patience=0).validate()
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--patience", "5", "--epochs", "50"])
    config = config_from_args(args)
    assert (config.early_stopping_patience, config.epochs) == (5, 50)
    assert config_from_args(parser.parse_args(["train"])).early_stopping_patience is None


def test_moving_average_of_the_weights_follows_the_hand_worked_decays():
    from core.train import moving_average

    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    average = moving_average(model, decay=0.9)
    average.update_parameters(model)  # the first update copies the weights
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    average.update_parameters(model)  # 1 update so far: decay min(0.9, 2/11) = 0.1818...
    assert average.module[0].weight.item() == pytest.approx(1 - 2 / 11)
    for _ in range(100):  # from 80 updates on the decay is 0.9: a step moves the average 0.1 of the way
        average.update_parameters(model)
    before = average.module[0].weight.item()
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    average.update_parameters(model)
    assert average.module[0].weight.item() == pytest.approx(before + 0.1 * (3.0 - before), rel=1e-6)
    model[1].num_batches_tracked.fill_(7)  # integer buffers are copied, not averaged
    average.update_parameters(model)
    assert average.module[1].num_batches_tracked.item() == 7


def test_a_run_with_weight_averaging_keeps_the_average_and_resumes_exactly():
    config = RunConfig(**{**TINY, "epochs": 3, "steps_per_epoch": 3, "ema_decay": 0.9})
    registry = Registry()
    whole = train_run(config, show_progress=False)
    last = load_checkpoint(registry.get_run(whole.run_id).last_checkpoint)
    assert last["average_updates"] == 9
    averaged, trained = last["state_dict"], last["training_state_dict"]
    assert any(not torch.equal(averaged[name], trained[name]) for name in averaged if averaged[name].is_floating_point())
    # The stored validation scores are the average's: scoring the saved state_dict reproduces them.
    model, _, _ = build_model_from_checkpoint(registry.get_run(whole.run_id).last_checkpoint)
    assert all(torch.equal(value, averaged[name]) for name, value in model.state_dict().items())

    interrupted = train_run(config, show_progress=False, stop=StopAfterEpoch(2, config.steps_per_epoch))
    assert interrupted.status == "cancelled" and interrupted.epochs_done == 2
    resumed = train_run(run_id=interrupted.run_id, show_progress=False)
    again = load_checkpoint(registry.get_run(resumed.run_id).last_checkpoint)
    for key in ("state_dict", "training_state_dict"):
        assert all(torch.equal(last[key][name], again[key][name]) for name in last[key]), key
    assert resumed.final_metrics["val_f1"] == pytest.approx(whole.final_metrics["val_f1"], abs=1e-9)
    with pytest.raises(ConfigError, match="ema_decay"):
        RunConfig(ema_decay=1.0).validate()


def test_best_by_the_background_f1_picks_and_stops_on_that_score():
    from core.config import best_epoch
    from core.train import early_stopping

    epochs = [{"epoch": 0, "val_f1": 0.9, "val_f1_negative": 0.9},  # the untrained model is no candidate
              {"epoch": 1, "val_f1": 0.80, "val_f1_negative": 0.70},
              {"epoch": 2, "val_f1": 0.85, "val_f1_negative": 0.78},
              {"epoch": 3, "val_f1": 0.90, "val_f1_negative": 0.75},
              {"epoch": 4, "val_f1": 0.91, "val_f1_negative": 0.78}]  # equal: no improvement
    assert best_epoch(epochs)["epoch"] == 4
    assert best_epoch(epochs, "val_f1_negative")["epoch"] == 2
    assert early_stopping(epochs, 3) == (4, None)
    epoch, reason = early_stopping(epochs, 2, best_by="val_f1_negative")
    assert epoch == 2 and "no improvement of the validation pixel F1 of the background for 2 epochs" in reason
    with pytest.raises(ConfigError, match="best_by"):
        RunConfig(best_by="val_loss").validate()

    result = train_run(RunConfig(**{**TINY, "epochs": 4, "best_by": "val_f1_negative"}), show_progress=False)
    stored = Registry().epochs(result.run_id)
    assert result.best_epoch == best_epoch(stored, "val_f1_negative")["epoch"]
    assert result.best_validation_f1 == best_epoch(stored, "val_f1_negative")["val_f1_negative"]
    assert load_checkpoint(Registry().get_run(result.run_id).best_checkpoint)["epoch"] == result.best_epoch


def test_best_by_the_objects_dsb_map_stores_the_score_the_evaluation_gives():
    from core.config import best_epoch
    from core.evaluate import evaluate_run

    config = RunConfig(**{**TINY, "epochs": 3, "steps_per_epoch": 12, "patch_size": 128, "base_width": 16,
                          "best_by": "val_dsb_map"})
    result = train_run(config, show_progress=False)
    stored = Registry().epochs(result.run_id)
    assert all(0 <= row["val_dsb_map"] <= 1 for row in stored[1:]) and stored[-1]["val_dsb_map"] > 0.1
    assert result.best_epoch == best_epoch(stored, "val_dsb_map")["epoch"]
    # The best epoch's stored score is what a full evaluation of best.pt reports for its objects.
    summary = evaluate_run(result.run_id, split="val", show_progress=False).summary
    assert summary["instances"]["components"]["dsb_map"] == pytest.approx(result.best_validation_f1, abs=1e-9)
    assert "val_dsb_map" not in Registry().epochs(train_run(RunConfig(**TINY, epochs=1), show_progress=False).run_id)[1]
