"""Tiled prediction: coverage, seamless blending, channel handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import UNetLabError
from core.model import UNet
from core.predict import TileSettings, blending_window, iter_tiles, match_channels, predict_probabilities, tile_starts


class Pointwise(torch.nn.Module):
    """A model whose output at a pixel depends only on that pixel: tiling must not change it."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.weight = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        return (x.mean(dim=1, keepdim=True) - 0.5) * self.weight


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (512, 512, 64), (37, 64, 16), (1000, 256, 64)])
def test_tiles_cover_everything_and_stay_inside(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for start in starts:
        assert start >= 0 and start + min(tile, length) <= length
        covered[start:start + min(tile, length)] = True
    assert covered.all()
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap


def test_window_is_positive_and_flat_in_the_middle():
    window = blending_window(64, 64, 16)
    assert window.min() > 0 and window[32, 32] == 1.0 and window[0, 0] < 0.01


def test_tiled_prediction_equals_whole_image_for_a_pointwise_model():
    image = np.random.default_rng(0).random((300, 421, 1), dtype=np.float32)
    model = Pointwise()
    whole = predict_probabilities(model, image, TileSettings(tile_size=1024))
    tiled = predict_probabilities(model, image, TileSettings(tile_size=64, overlap=16, batch_size=3))
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    assert tiled.shape == (300, 421) and tiled.dtype == np.float32


def test_unet_tiles_blend_without_seams():
    torch.manual_seed(0)
    model = UNet(1, base_width=4, depth=2).eval()
    yy, xx = np.mgrid[:192, :192]
    image = (0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)[:, :, None]
    whole = predict_probabilities(model, image, TileSettings(tile_size=256))
    tiled = predict_probabilities(model, image, TileSettings(tile_size=96, overlap=32))
    # A small receptive field means tiles with a 32-pixel overlap see almost the same context.
    assert np.abs(tiled - whole).mean() < 0.01


def test_flip_tta_and_channels():
    image = np.random.default_rng(1).random((40, 50, 3), dtype=np.float32)
    model = Pointwise(3)
    plain = predict_probabilities(model, image, TileSettings(tile_size=64, overlap=16))
    flipped = predict_probabilities(model, image, TileSettings(tile_size=64, overlap=16, flip_tta=True))
    np.testing.assert_allclose(plain, flipped, atol=1e-6)  # a pointwise model is flip-equivariant
    assert match_channels(image, 1).shape == (40, 50, 1)
    assert match_channels(image[:, :, :1], 3).shape == (40, 50, 3)
    with pytest.raises(UNetLabError, match="2 channels; the model expects 3"):
        match_channels(image[:, :, :2], 3)


def test_bad_settings_are_clear_errors():
    with pytest.raises(UNetLabError, match="overlap"):
        TileSettings(tile_size=64, overlap=64)
    with pytest.raises(UNetLabError, match="shape"):
        predict_probabilities(Pointwise(), np.zeros((2, 3, 4, 5), np.float32))
    assert len(list(iter_tiles(10, 10, TileSettings(tile_size=64, overlap=16)))) == 1


def test_blended_probabilities_stay_within_0_and_1():
    """A model that is certain everywhere: overlapping tiles must not round above 1."""

    class Certain(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x[:, :1], 30.0)

    image = np.random.default_rng(0).random((301, 257, 1)).astype(np.float32)
    probability = predict_probabilities(Certain(), image, TileSettings(tile_size=64, overlap=24), device="cpu")
    assert probability.max() <= 1.0 and probability.min() >= 0.0
    np.testing.assert_allclose(probability, 1.0, atol=1e-6)
