"""Starting a run from another run's (or a shipped model's) weights, and instance-aware training
end to end (issue #14)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.checkpoints import load_checkpoint
from core.cli import main
from core.runs import Registry

TINY = ["--dataset", "synthetic-nuclei", "--train-fraction", "0.5", "--augmentation", "none", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "64", "--depth", "3", "--threads", "1",
        "--quiet", "--json"]


def train(capsys, *extra: str) -> dict:
    code = main(["train", *TINY, *extra])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    return json.loads(out[-1])


def test_init_from_copies_the_weights_and_refuses_shapes_that_differ(capsys):
    source = train(capsys, "--width", "8")
    registry = Registry()
    before = len(registry.list_runs())

    # Another width: refused before any run is created, in one line naming both widths.
    assert main(["train", *TINY, "--width", "16", "--init-from", source["run_id"]]) == 2
    error = capsys.readouterr().err
    assert "width 8" in error and "width is 16" in error and "Traceback" not in error
    # Another target (two output channels): refused too.
    assert main(["train", *TINY, "--width", "8", "--target", "mask+contour", "--init-from", source["run_id"]]) == 2
    assert "output channels 1" in capsys.readouterr().err
    # A name that is neither a run nor a shipped model.
    assert main(["train", *TINY, "--width", "8", "--init-from", "no-such-run"]) == 2
    assert "no run with that id and no shipped model" in capsys.readouterr().err
    assert len(registry.list_runs()) == before  # nothing was created by the refusals

    tuned = train(capsys, "--width", "8", "--init-from", source["run_id"])
    epochs = registry.epochs(tuned["run_id"])
    # Every epoch keeps its loss per optimiser step (the live chart's), 2 steps here, their mean the epoch's.
    assert len(epochs[1]["step_losses"]) == 2
    assert sum(epochs[1]["step_losses"]) / 2 == pytest.approx(epochs[1]["train_loss"], rel=1e-4)
    assert epochs[0]["note"] == f"initial weights from {source['run_id']}"
    # Epoch 0 of the fine-tuned run scores the source's best weights: the same validation F1
    # (the same split: same dataset, fraction and seed).
    assert epochs[0]["val_f1"] == pytest.approx(registry.epochs(source["run_id"])[1]["val_f1"], abs=1e-6)
    assert registry.get_run(tuned["run_id"]).config.init_from == source["run_id"]


def test_init_from_the_shipped_model_adapts_its_colour_input_to_grey(capsys):
    tuned = train(capsys, "--width", "16", "--init-from", "starter-nuclei")
    registry = Registry()
    untrained = registry.epochs(tuned["run_id"])[0]
    assert untrained["note"] == "initial weights from starter-nuclei"
    # The shipped nuclei model already finds the synthetic nuclei before any step; a random
    # network of this size does not (its F1 on this split is below 0.3).
    assert untrained["val_f1"] > 0.5
    checkpoint = load_checkpoint(registry.get_run(tuned["run_id"]).best_checkpoint)
    assert checkpoint["in_channels"] == 1
    assert tuple(checkpoint["state_dict"]["encoder.0.0.weight"].shape) == (16, 1, 3, 3)


def test_mask_and_contour_training_runs_end_to_end_and_is_scored_with_seeded_watershed(capsys):
    result = train(capsys, "--width", "8", "--target", "mask+contour", "--border-weight", "10",
                   "--loss", "bce+dice", "--lr-schedule", "warmup-cosine", "--foreground-sampling", "0.5",
                   "--normalization", "percentile", "--colour", "grey-dark-background")
    evaluation = result["evaluation"]
    for method in ("components", "watershed", "seeded-watershed"):
        assert f"dsb_map[{method}]" in evaluation
    registry = Registry()
    record = registry.get_run(result["run_id"])
    checkpoint = load_checkpoint(record.best_checkpoint)
    assert tuple(checkpoint["state_dict"]["head.weight"].shape)[0] == 2  # two outputs: mask and outline
    # The stored summary says which parameters made its objects.
    parameters = registry.get_evaluation(result["run_id"])["method_parameters"]
    assert parameters["seeded-watershed"]["contour_threshold"] == 0.1
    assert parameters["seeded-watershed"]["threshold"] == record.config.threshold
    assert parameters["watershed"]["min_distance"] > 0

    from core.inference import load_model, predict_image

    loaded = load_model(record.best_checkpoint, device="cpu")
    image = np.random.default_rng(0).random((70, 90, 1)).astype(np.float32)
    prediction = predict_image(loaded, image)
    assert prediction.probability.shape == (70, 90) and prediction.contour.shape == (70, 90)
    assert 0 <= prediction.contour.min() and prediction.contour.max() <= 1


def test_a_mask_model_has_no_contour_and_predict_refuses_seeded_watershed_alone(capsys, tmp_path):
    from PIL import Image

    result = train(capsys, "--width", "8")
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(image)
    checkpoint = Registry().get_run(result["run_id"]).best_checkpoint
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(image.parent), "--output",
                 str(tmp_path / "out"), "--instances", "seeded-watershed"]) == 2
    assert "mask+contour" in capsys.readouterr().err
    # "all" gives a mask model the methods it can use.
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(image.parent), "--output",
                 str(tmp_path / "out"), "--instances", "all"]) == 0
    manifest = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert "seeded-watershed" not in manifest["methods"] and "watershed" in manifest["methods"]


def test_a_colour_dataset_trains_in_grey_with_dark_backgrounds(capsys, dsb2018_root):
    result = train(capsys, "--dataset", "dsb2018", "--root", str(dsb2018_root), "--image-size", "64", "--width", "8",
                   "--colour", "grey-dark-background", "--normalization", "percentile", "--target", "mask+contour")
    checkpoint = load_checkpoint(Registry().get_run(result["run_id"]).best_checkpoint)
    assert checkpoint["in_channels"] == 1  # DSB images are RGB; the network sees grey
    assert "dsb_map[seeded-watershed]" in result["evaluation"]


def test_from_scratch_versus_fine_tuned_is_a_study_axis():
    from core.study import StudyGrid, grid_configs, parse_init_from
    from core.tables import setting_key

    assert parse_init_from("none, starter-nuclei,scratch") == [None, "starter-nuclei"]
    grid = StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.5], augmentations=["none"], seeds=[0, 1],
                     init_from=[None, "starter-nuclei"], overrides={"epochs": 1})
    configs = grid_configs(grid, "ft")
    assert sorted((c.seed, c.init_from or "") for c in configs) == [(0, ""), (0, "starter-nuclei"), (1, ""),
                                                                     (1, "starter-nuclei")]
    # From scratch and fine-tuned are two settings, never pooled; the seeds of one setting are.
    keys = {c.init_from: setting_key(c) for c in configs}
    assert len(set(keys.values())) == 2
    assert len({setting_key(c) for c in configs if c.init_from is None}) == 1
