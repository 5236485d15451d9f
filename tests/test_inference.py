"""Tests of what the Segment page runs in core: a run's model on an image, and the post-processing form."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import RunConfig
from core.errors import UNetLabError
from core.postprocess import postprocess_parameters


def test_predict_image_with_a_saved_checkpoint(tmp_path):
    import torch

    from core.checkpoints import save_checkpoint
    from core.inference import load_model, predict_image
    from core.model import UNet

    torch.manual_seed(0)
    config = RunConfig(base_width=4, depth=2, tile_size=64, device="cpu", precision="fp32")
    model = UNet(in_channels=1, base_width=4, depth=2)
    path = save_checkpoint(tmp_path / "best.pt", {"state_dict": model.state_dict(), "config": config.to_dict(),
                                                  "epoch": 3, "in_channels": 1})
    loaded = load_model(path, device="cpu")
    assert loaded.channels == 1 and loaded.epoch == 3 and loaded.precision == "fp32"
    rgb = np.random.default_rng(0).random((100, 70, 3)).astype(np.float32)  # RGB into a grey model
    result = predict_image(loaded, rgb)
    assert result.probability.shape == (100, 70) and result.probability.dtype == np.float32
    assert 0 <= result.probability.min() and result.probability.max() <= 1
    assert result.tiles == 4 and result.seconds > 0  # 2 x 2 tiles of 64 px cover 100 x 70
    with torch.no_grad():
        whole = torch.sigmoid(loaded.model(torch.from_numpy(rgb.mean(axis=2)[None, None, :64, :64].copy())))
    assert np.abs(predict_image(loaded, rgb[:64, :64]).probability - whole[0, 0].numpy()).max() < 1e-5


def test_postprocess_parameters_list_the_tunable_ones():
    names = [p["name"] for p in postprocess_parameters("watershed")]
    assert "min_distance" in names and "threshold" not in names
    with pytest.raises(UNetLabError, match="unknown post-processing method"):
        postprocess_parameters("magic")
