"""Instance-aware targets, the border weight map, seeded watershed, losses, schedules and
preprocessing (issue #14), each on hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.draw import disk

from core.config import RunConfig
from core.errors import ConfigError
from core.metrics import MetricInputError, instance_scores
from core.postprocess import components, methods_for, postprocess, seeded_watershed
from core.preprocess import has_bright_background, input_channels, normalize_percentile, preprocess
from core.targets import border_weight_map, contour_map, target_channels
from core.train import adapt_input_channels, lr_factor, patch_corner, segmentation_loss


def two_touching_discs(size: int = 40, radius: int = 8) -> np.ndarray:
    """int32 labels: two discs of ``radius`` whose centres are 2 * radius - 2 apart, so they
    overlap; the overlap goes to disc 2, leaving a straight shared border."""
    labels = np.zeros((size, size), np.int32)
    centre = size // 2
    labels[disk((centre, centre - radius + 1), radius, shape=labels.shape)] = 1
    labels[disk((centre, centre + radius - 1), radius, shape=labels.shape)] = 2
    return labels


# ---- targets ------------------------------------------------------------------------------


def test_contour_of_two_touching_squares_is_worked_by_hand():
    labels = np.zeros((5, 8), np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4:7] = 2
    contour = contour_map(labels)
    # Middle row: each square's outer columns are outline, the centre pixel (2, 2) of square 1 is
    # its only interior pixel, and columns 3 and 4 are the shared border, one pixel on each side.
    assert contour[2].astype(int).tolist() == [0, 1, 0, 1, 1, 0, 1, 0]
    assert contour[1, 1:7].all() and contour[3, 1:7].all()  # top and bottom rows are outline
    assert not contour[0].any() and not contour[4].any()  # background is never outline
    assert int(contour.sum()) == 16  # 18 object pixels, all outline but the two centres
    assert not contour[2, 2] and not contour[2, 5]


def test_contour_separates_touching_discs_so_the_interiors_are_two_components():
    labels = two_touching_discs()
    mask = labels > 0
    assert ndi.label(mask)[1] == 1  # as a mask they are one object
    interior = mask & ~contour_map(labels)
    assert ndi.label(interior)[1] == 2  # the outline parts them
    shared = (labels == 1) & ndi.binary_dilation(labels == 2)
    assert shared.any() and contour_map(labels)[shared].all()  # the border between them is outline


def test_target_channels_shapes_and_values():
    labels = two_touching_discs()
    mask = labels > 0
    single = target_channels(mask, labels, "mask")
    assert single.shape == (1, 40, 40) and single.dtype == np.float32
    np.testing.assert_array_equal(single[0], mask)
    both = target_channels(mask, labels, "mask+contour")
    assert both.shape == (2, 40, 40)
    np.testing.assert_array_equal(both[1], contour_map(labels))
    # Without instance labels the mask's components stand in: the two discs are one object then.
    merged = target_channels(mask, None, "mask+contour")
    assert merged[1].sum() < both[1].sum()
    with pytest.raises(ValueError, match="unknown target"):
        target_channels(mask, labels, "distance")


def brute_force_weights(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The weight map from every object's full-image distance transform (slow, obviously right)."""
    distances = np.sort(np.stack([ndi.distance_transform_edt(labels != i) for i in range(1, labels.max() + 1)]), axis=0)
    gap = distances[0] + distances[1]
    weights = 1 + w0 * np.exp(-gap ** 2 / (2 * sigma ** 2))
    weights[labels > 0] = 1
    return weights


def test_border_weight_map_matches_the_definition_and_peaks_in_the_gap():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 5:25] = 1
    labels[10:30, 27:47] = 2  # a 2-pixel gap at columns 25-26
    labels[2:6, 55:59] = 3  # a lone small object far away
    weights = border_weight_map(labels, w0=10, sigma=5)
    expected = brute_force_weights(labels, 10, 5)
    # Equal where the weight matters; the bounding-box shortcut only drops terms below 0.011 * w0.
    np.testing.assert_allclose(weights, expected, atol=0.12)
    # In the gap: d1 = d2 = 1 px (or 1 and 2): weight close to 1 + w0 exp(-(2..3)^2 / 50).
    assert weights[20, 25] == pytest.approx(1 + 10 * math.exp(-9 / 50), abs=1e-4)
    assert weights[20, 26] == pytest.approx(1 + 10 * math.exp(-9 / 50), abs=1e-4)
    assert (weights[labels > 0] == 1).all()
    assert weights[38, 2] < 1.05  # far from any two objects


def test_touching_weight_weighs_the_line_where_two_objects_meet_and_leaves_lone_objects_alone():
    labels = np.zeros((30, 60), np.int32)
    labels[5:25, 5:20] = 1
    labels[5:25, 20:35] = 2  # touching 1 along columns 19 | 20, no background between them
    labels[5:15, 45:55] = 3  # alone
    weights = border_weight_map(labels, w0=0, sigma=3, touching=10)
    # On the touching line the distance to the other object is 1 pixel: 1 + 10 exp(-1 / 18).
    assert weights[15, 19] == pytest.approx(1 + 10 * math.exp(-1 / 18), abs=1e-4)
    assert weights[15, 20] == pytest.approx(1 + 10 * math.exp(-1 / 18), abs=1e-4)
    # Four pixels into object 1 the other object is 5 pixels away (columns 15 -> 20).
    assert weights[15, 15] == pytest.approx(1 + 10 * math.exp(-25 / 18), abs=1e-4)
    assert weights[10, 50] < 1.001 and weights[0, 0] == 1  # a lone object and w0 = 0 background
    # Without it, objects weigh 1 as in the paper; the gap term is unchanged by it.
    assert (border_weight_map(labels, w0=10, sigma=3)[labels > 0] == 1).all()
    both = border_weight_map(labels, w0=10, sigma=3, touching=10)
    np.testing.assert_array_equal(both[labels == 0], border_weight_map(labels, w0=10, sigma=3)[labels == 0])


# ---- seeded watershed ------------------------------------------------------------------------


def test_seeded_watershed_separates_touching_discs_that_components_merge():
    labels = two_touching_discs()
    foreground = (labels > 0).astype(np.float32)
    contour = contour_map(labels).astype(np.float32)
    merged = components(foreground)
    assert merged.max() == 1
    split = seeded_watershed(foreground, contour)
    assert split.max() == 2
    assert instance_scores(labels, split).dsb_map > instance_scores(labels, merged).dsb_map
    # Each predicted object is one disc: matching IoU is high for both.
    for obj in (1, 2):
        best = max(np.sum((split == k) & (labels == obj)) / np.sum((split == k) | (labels == obj)) for k in (1, 2))
        assert best > 0.85
    assert postprocess(foreground, "seeded-watershed", contour=contour).max() == 2


def test_seeded_watershed_splits_at_a_faint_outline_by_default_and_not_at_0_5():
    # A trained network's outline map is strong where an object meets the background but faint
    # (0.05-0.3 on DSB 2018) on the line where two objects touch; the default seed threshold
    # must still part them there.
    labels = two_touching_discs()
    foreground = (labels > 0).astype(np.float32)
    outline = contour_map(labels)
    touching_line = outline & ndi.binary_dilation(labels == 1) & ndi.binary_dilation(labels == 2)
    assert touching_line.sum() >= 8
    contour = np.where(outline, 0.9, 0.02).astype(np.float32)
    contour[touching_line] = 0.25
    assert seeded_watershed(foreground, contour).max() == 2
    merged = postprocess(foreground, "seeded-watershed", contour=contour, contour_threshold=0.5)
    assert merged.max() == 1


def test_seeded_watershed_keeps_an_object_without_a_seed():
    foreground = np.zeros((20, 20), np.float32)
    foreground[5:8, 5:8] = 1  # 9 pixels: all outline, no seed, but above min_size? (min_size 16 drops it)
    foreground[10:16, 10:16] = 1
    contour = np.zeros_like(foreground)
    contour[10:16, 10:16] = 1  # the whole 6x6 object is outline: no seed pixel survives
    labels = postprocess(foreground, "seeded-watershed", contour=contour, min_size=4)
    assert labels.max() == 2  # both objects kept


def test_seeded_watershed_needs_the_contour_map():
    probability = np.zeros((10, 10), np.float32)
    with pytest.raises(MetricInputError, match="mask\\+contour"):
        postprocess(probability, "seeded-watershed")
    with pytest.raises(MetricInputError, match="shape"):
        seeded_watershed(probability, np.zeros((5, 5), np.float32))
    assert "seeded-watershed" not in methods_for(False) and "seeded-watershed" in methods_for(True)


# ---- losses and schedules --------------------------------------------------------------------


def test_losses_on_a_hand_computed_case():
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    p = torch.sigmoid(logits)
    bce = float(-(torch.log(p[0, 0, 0, 0]) + torch.log(p[0, 0, 0, 1]) + torch.log(1 - p[0, 0, 1, 0])
                  + torch.log(1 - p[0, 0, 1, 1])) / 4)
    assert float(segmentation_loss(logits, target, "bce")) == pytest.approx(bce, rel=1e-6)
    intersection = float(p[0, 0, 0].sum())
    dice = (2 * intersection + 1) / (float(p.sum()) + 2 + 1)
    assert float(segmentation_loss(logits, target, "dice")) == pytest.approx(1 - dice, rel=1e-6)
    assert float(segmentation_loss(logits, target, "bce+dice")) == pytest.approx(bce + 1 - dice, rel=1e-6)
    # Focal: each pixel's cross-entropy times (1 - p_t)^2.
    p_t = torch.where(target > 0, p, 1 - p)
    focal = float((-torch.log(p_t) * (1 - p_t) ** 2).mean())
    assert float(segmentation_loss(logits, target, "focal")) == pytest.approx(focal, rel=1e-6)
    # Weights of 1 change nothing; doubling one pixel's weight adds its term once more.
    ones = torch.ones(1, 1, 2, 2)
    assert float(segmentation_loss(logits, target, "bce", ones)) == pytest.approx(bce, rel=1e-6)
    weights = ones.clone()
    weights[0, 0, 1, 0] = 2
    extra = float(-torch.log(1 - p[0, 0, 1, 0])) / 4
    assert float(segmentation_loss(logits, target, "bce", weights)) == pytest.approx(bce + extra, rel=1e-6)


def test_loss_averages_over_output_channels():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 8, 8), (torch.rand(2, 2, 8, 8) > 0.5).float()
    both = segmentation_loss(logits, target, "bce+dice")
    each = [segmentation_loss(logits[:, k:k + 1], target[:, k:k + 1], "bce+dice") for k in range(2)]
    assert float(both) == pytest.approx(float(sum(each) / 2), rel=1e-5)
    assert float(F.binary_cross_entropy_with_logits(logits, target)) == pytest.approx(
        float(segmentation_loss(logits, target, "bce")), rel=1e-6)


def test_per_step_schedules():
    total = 200
    warm = [lr_factor("warmup-cosine", step, total) for step in range(total + 1)]
    assert warm[0] == pytest.approx(0.1) and warm[9] == pytest.approx(1.0)  # 5% = 10 steps of warm-up
    assert all(a <= b for a, b in zip(warm[:10], warm[1:10]))
    assert all(a >= b for a, b in zip(warm[10:], warm[11:]))  # then only down
    assert warm[-1] == pytest.approx(0.0, abs=1e-9)
    poly = [lr_factor("poly", step, total) for step in range(total + 1)]
    assert poly[0] == 1 and poly[100] == pytest.approx(0.5 ** 0.9) and poly[-1] == 0


def test_foreground_sampling_centres_patches_on_objects():
    mask = np.zeros((100, 100), bool)
    mask[80:84, 10:14] = True
    foreground = np.flatnonzero(mask)
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left = patch_corner(rng, mask.shape, (32, 32), foreground, 1.0)
        assert 0 <= top <= 68 and 0 <= left <= 68
        assert mask[top:top + 32, left:left + 32].any()
    # Off: uniform corners, and the generator advances as before the option existed.
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert patch_corner(a, mask.shape, (32, 32), foreground, 0.0) == (int(b.integers(69)), int(b.integers(69)))


# ---- preprocessing -------------------------------------------------------------------------


def test_percentile_normalisation_and_dark_background():
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 1)) * 0.2 + 0.4).astype(np.float32)  # values in [0.4, 0.6]
    normalised = normalize_percentile(image)
    lo, hi = np.percentile(image, [1, 99.8])
    assert normalised.min() == 0 and normalised.max() == 1
    np.testing.assert_allclose(normalised, np.clip((image - lo) / (hi - lo), 0, 1), atol=1e-6)
    bright = np.full((32, 32, 3), 0.9, np.float32)
    bright[10:20, 10:20] = 0.2  # a dark nucleus on a bright background
    grey = preprocess(bright, colour="grey-dark-background")
    assert grey.shape == (32, 32, 1)
    assert grey[15, 15, 0] == pytest.approx(0.8) and grey[0, 0, 0] == pytest.approx(0.1)  # inverted
    assert has_bright_background(bright.mean(axis=2, keepdims=True))
    dark = 1 - bright
    np.testing.assert_allclose(preprocess(dark, colour="grey-dark-background"), dark[:, :, :1], atol=1e-6)
    as_uint8 = (bright * 255).astype(np.uint8)
    np.testing.assert_allclose(preprocess(as_uint8), as_uint8 / 255, atol=1e-7)  # defaults: only to float
    assert input_channels(3, "keep") == 3 and input_channels(3, "grey") == 1


def test_colour_weights_adapted_to_grey_compute_the_same_function():
    from core.model import UNet
    from core.predict import match_channels

    torch.manual_seed(0)
    colour = UNet(in_channels=3, base_width=4, depth=2).eval()
    grey = UNet(in_channels=1, base_width=4, depth=2).eval()
    grey.load_state_dict(adapt_input_channels(colour.state_dict(), grey))
    image = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
    as_colour = torch.from_numpy(match_channels(image, 3).transpose(2, 0, 1)[None].copy())
    as_grey = torch.from_numpy(image.transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        torch.testing.assert_close(grey(as_grey), colour(as_colour), atol=1e-5, rtol=1e-5)


def test_new_settings_are_validated():
    for bad in (dict(target="distance"), dict(border_weight=-1), dict(foreground_sampling=1.5),
                dict(normalization="zscore"), dict(colour="rgb"), dict(init_from=""), dict(lr_schedule="step")):
        with pytest.raises(ConfigError):
            RunConfig(**bad).validate()
    assert RunConfig(target="mask+contour").output_channels == 2
