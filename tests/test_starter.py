"""Shipped models: found with their facts, offered before runs, loaded like any checkpoint."""

from __future__ import annotations

import json

import numpy as np
import torch

from core.checkpoints import save_checkpoint
from core.config import RunConfig
from core.inference import load_model, predict_image
from core.model import UNet
from core.starter import find_starter, model_choices, starter_models


def shipped(folder, name="toy", config=None):
    config = config or RunConfig(base_width=4, depth=2, tile_size=64)
    (folder / name).mkdir(parents=True)
    state = {key: value.half() if value.is_floating_point() else value
             for key, value in UNet(1, config.base_width, config.depth).state_dict().items()}
    save_checkpoint(folder / name / "model.pt", {"state_dict": state, "config": config.to_dict(), "epoch": 7,
                                                 "in_channels": 1})
    (folder / name / "model.json").write_text(json.dumps({
        "title": "Toy", "trained_on": "nothing", "config": config.to_dict(),
        "validation": {"n_images": 3, "pixel_f1": 0.5, "dsb_map_components": 0.25, "dsb_map_watershed": 0.3}}))
    return folder / name


def test_shipped_models_are_found_described_and_loaded_from_float16(tmp_path):
    shipped(tmp_path)
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "model.pt").write_bytes(b"")  # no model.json: not offered
    (model,) = starter_models(tmp_path)
    assert model.name == "toy" and model.config.base_width == 4 and find_starter("toy", tmp_path) == model
    assert "trained on nothing" in model.describe() and "DSB mAP" in model.describe()
    loaded = load_model(model.checkpoint, device="cpu")
    assert loaded.epoch == 7 and next(loaded.model.parameters()).dtype == torch.float32
    probability = predict_image(loaded, np.random.default_rng(0).random((40, 30)).astype(np.float32)).probability
    assert probability.shape == (40, 30)


def test_model_choices_put_shipped_models_first_then_runs_with_a_best_checkpoint(tmp_path):
    from core.runs import Registry

    shipped(tmp_path / "models")
    registry = Registry(tmp_path / "registry.sqlite")
    with_weights, without = registry.create_run(RunConfig()), registry.create_run(RunConfig())
    record = registry.get_run(with_weights)
    record.checkpoint_dir.mkdir(parents=True)
    (record.checkpoint_dir / "best.pt").write_bytes(b"x")
    choices = model_choices(registry.list_runs(), tmp_path / "models")
    assert [choice.key for choice in choices] == ["starter:toy", with_weights]
    assert without not in [choice.key for choice in choices]
