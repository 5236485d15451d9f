"""Stored evaluation of a trained run, and the predict command, on a tiny synthetic run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_fill_holes
from sklearn.metrics import average_precision_score, roc_auc_score

from core.config import RunConfig
from core.datasets import load_dataset, split
from core.errors import RunError
from core.evaluate import evaluate_run, format_evaluation, load_evaluation
from core.paths import PROJECT_ROOT
from core.runs import Registry
from core.train import train_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One small trained run shared by the tests of this module (its own registry)."""
    base = tmp_path_factory.mktemp("evaluate")
    registry = Registry(base / "registry.sqlite")
    config = RunConfig(dataset="synthetic-nuclei", train_fraction=0.5, epochs=2, steps_per_epoch=10, batch_size=4,
                       patch_size=128, base_width=8, depth=3, tile_size=256)
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETLAB_CHECKPOINTS", str(base / "checkpoints"))
    result = train_run(config, registry=registry, show_progress=False)
    yield registry, result
    mp.undo()


def test_evaluation_is_complete_consistent_and_idempotent(trained_run):
    registry, result = trained_run
    evaluation = evaluate_run(result.run_id, registry=registry, n_stored_maps=100, show_progress=False)
    summary = evaluation.summary
    dataset = load_dataset("synthetic-nuclei")
    validation = split(dataset, 0.5, 0).validation
    assert summary["n_images"] == len(validation)
    pixel = summary["pixel"]
    assert pixel["tp"] + pixel["fp"] + pixel["fn"] + pixel["tn"] == sum(dataset[i].mask.size for i in validation)
    assert pixel["f1"] == pytest.approx(2 * pixel["tp"] / (2 * pixel["tp"] + pixel["fp"] + pixel["fn"]))
    assert pixel["f1"] == pytest.approx(result.final_metrics["val_f1"], abs=1e-9)  # same as training's validation
    assert set(summary["instances"]) == {"components", "watershed", "kmeans-watershed"}
    for scores in summary["instances"].values():
        assert 0 <= scores["dsb_map"] <= 1 and scores["tp50"] + scores["fn50"] == scores["n_truth"]

    # The histogram curves agree with scikit-learn on the stored probability maps.
    probabilities = np.concatenate([evaluation.arrays[f"probability_{k}"].astype(np.float32).ravel()
                                    for k in range(len(validation))])
    truth = np.concatenate([dataset[int(evaluation.arrays[f"index_{k}"])].mask.ravel() for k in range(len(validation))])
    # float16 storage rounds the maps, so compare at the precision that survives it.
    assert summary["curves"]["roc_auc"] == pytest.approx(roc_auc_score(truth, probabilities), abs=2e-3)
    assert summary["curves"]["average_precision"] == pytest.approx(average_precision_score(truth, probabilities), abs=2e-3)

    again = evaluate_run(result.run_id, registry=registry, n_stored_maps=100, show_progress=False)
    assert again.summary["pixel"] == summary["pixel"] and again.summary["instances"] == summary["instances"]
    stored = load_evaluation(result.run_id, registry=registry)
    assert stored.summary["pixel"] == summary["pixel"]
    text = format_evaluation(stored)
    assert "DSB mAP, IoU 0.50 to 0.95, TP/(TP+FP+FN)" in text and "all-positive" in text


def test_membrane_sets_get_rand_scores():
    config = RunConfig(dataset="synthetic-membranes", train_fraction=0.3, epochs=1, steps_per_epoch=2, batch_size=2,
                       patch_size=64, base_width=8, depth=3, tile_size=256)
    result = train_run(config, show_progress=False)
    summary = evaluate_run(result.run_id, methods=("components",), show_progress=False).summary
    rand = summary["foreground_restricted"]["components"]
    assert 0 <= rand["v_rand"] <= 1 and 0 <= rand["v_info"] <= 1


def test_unknown_split_and_unlabelled_errors(trained_run):
    registry, result = trained_run
    with pytest.raises(RunError, match="unknown split"):
        evaluate_run(result.run_id, split="holdout", registry=registry, show_progress=False)


def test_predict_command_writes_maps_masks_and_labels(trained_run, tmp_path):
    _, result = trained_run
    sample = load_dataset("synthetic-nuclei")[0]
    Image.fromarray((sample.image[:, :, 0] * 65535).astype(np.uint16)).save(tmp_path / "cells.png")
    out = tmp_path / "out"
    process = subprocess.run([sys.executable, "-m", "core", "predict", "--checkpoint",
                              f"{result.checkpoint_dir}/best.pt", "--input", str(tmp_path / "cells.png"),
                              "--output", str(out), "--instances", "watershed"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-800:]
    mask = np.asarray(Image.open(out / "cells_mask.png"))
    labels = np.asarray(Image.open(out / "cells_labels-watershed.png"))
    assert mask.shape == sample.mask.shape and set(np.unique(mask)) <= {0, 255}
    # Objects lie inside the mask once its holes are filled (components fills holes by default).
    assert labels.max() >= 1 and ((labels > 0) <= binary_fill_holes(mask > 0)).all()
    agreement = ((mask > 0) == sample.mask).mean()
    assert agreement > 0.8


def test_evaluate_cli_json(trained_run, monkeypatch):
    registry, result = trained_run
    monkeypatch.setenv("UNETLAB_CACHE", str(registry.path.parent))
    process = subprocess.run([sys.executable, "-m", "core", "evaluate", "--run", result.run_id, "--json",
                              "--methods", "components"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-800:]
    out = json.loads(process.stdout.strip().splitlines()[-1])
    assert out["headline"]["pixel_f1"] == pytest.approx(result.final_metrics["val_f1"])
    assert "pixel_f1_all_positive" in out["headline"] and "dsb_map[components]" in out["headline"]


def test_one_checkpoint_scores_the_same_everywhere(trained_run):
    """Training's validation, evaluate and core.inference (predict, the pages) give the same maps."""
    from core.inference import load_model, predict_image
    from core.metrics import pixel_counts

    registry, result = trained_run
    evaluation = evaluate_run(result.run_id, registry=registry, methods=("components",), show_progress=False,
                              store=False)
    loaded = load_model(f"{result.checkpoint_dir}/best.pt", device="cpu")
    config = registry.get_run(result.run_id).config
    dataset = load_dataset(config.dataset)
    indices = split(dataset, config.train_fraction, config.seed, config.validation_fraction).validation
    per_image = {row["name"]: row["pixel_f1"] for row in evaluation.summary["per_image"]}
    assert len(per_image) == len(indices) >= 2
    for index in indices:
        sample = dataset[index]
        probability = predict_image(loaded, sample.image).probability
        assert pixel_counts(probability, sample.mask, config.threshold).f1 == pytest.approx(per_image[sample.name],
                                                                                            abs=1e-12)
    best = [row for row in registry.epochs(result.run_id) if row["epoch"] == result.best_epoch][0]
    assert evaluation.summary["pixel"]["f1"] == pytest.approx(best["val_f1"], abs=1e-12)


def test_evaluate_with_flip_tta_averages_the_flipped_predictions_and_says_so(trained_run, monkeypatch):
    registry, result = trained_run
    plain = evaluate_run(result.run_id, registry=registry, methods=("components",), show_progress=False, store=False)
    monkeypatch.setenv("UNETLAB_CACHE", str(registry.path.parent))
    process = subprocess.run([sys.executable, "-m", "core", "evaluate", "--run", result.run_id, "--tta",
                              "--methods", "components"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-800:]
    assert "averaged over 4 flips" in process.stdout
    stored = load_evaluation(result.run_id, registry=registry).summary
    assert stored["flip_tta"] is True and plain.summary["flip_tta"] is False
    # A different prediction (4 flips of a barely trained model do not agree pixel for pixel).
    assert stored["pixel"]["tp"] != plain.summary["pixel"]["tp"] or stored["pixel"]["fp"] != plain.summary["pixel"]["fp"]
