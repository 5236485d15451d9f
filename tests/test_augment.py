"""Augmentation levels: alignment of image and labels, shapes, dtypes, seeding, preview and CLI."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import albumentations as A
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries

from core.augment import (
    LEVELS,
    AugmentationError,
    augment,
    build_augmentation,
    describe_level,
    preview_grid,
    set_augmentation_seed,
)
from core.cli import main
from core.errors import UNetLabError

import core.augment
import core.commands.augment_preview


def blobs(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Irregular, asymmetric blobs ~10-20 px across covering about a third of the area."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma=4)
    return noise > np.quantile(noise, 0.65)


def encoding_image(mask: np.ndarray, channels: int = 1) -> np.ndarray:
    """An image whose intensity encodes the mask exactly: 0.25 outside, 0.75 inside."""
    image = np.where(mask, 0.75, 0.25).astype(np.float32)
    return np.repeat(image[..., None], channels, axis=2)


def misaligned_pixels(image: np.ndarray, mask: np.ndarray, border: int = 2) -> int:
    """Pixels where ``mask`` disagrees with ``image > 0.5`` farther than ``border`` px from a mask edge.

    Linear interpolation of the image and nearest-neighbour interpolation of the mask may
    disagree right at an edge; anywhere else a disagreement means the two were moved differently.
    """
    disagree = mask != (image[..., 0] > 0.5)
    near_edge = ndimage.binary_dilation(find_boundaries(mask, mode="thick"), iterations=border)
    return int((disagree & ~near_edge).sum())


# ---- levels and their description -----------------------------------------------------------


def test_levels():
    assert LEVELS == ("none", "light", "medium", "heavy")
    assert build_augmentation("none", 256) is None
    for level in LEVELS[1:]:
        assert isinstance(build_augmentation(level, 256), A.Compose)


def test_levels_add_up_and_are_described():
    described = {level: describe_level(level) for level in LEVELS}
    assert described["none"] == []
    assert described["light"] == ["HorizontalFlip p=0.5", "VerticalFlip p=0.5", described["light"][2]]
    assert described["light"][2].startswith("RandomRotate90 p=1")
    assert described["medium"][:3] == described["light"]
    assert set(described["medium"]) < set(described["heavy"])
    names = {level: " ".join(lines) for level, lines in described.items()}
    for word in ("Affine", "RandomResizedCrop", "RandomBrightnessContrast"):
        assert word in names["medium"] and word not in names["light"]
    for word in ("ElasticTransform", "GridDistortion", "GaussianBlur", "GaussNoise"):
        assert word in names["heavy"] and word not in names["medium"]
    # The module docstring writes out every transform of every level.
    for lines in described.values():
        for line in lines:
            for name in line.replace(":", " ").split():
                if name[0].isupper() and name.isalnum():
                    assert name in core.augment.__doc__, name


def test_geometric_transforms_use_nearest_neighbour_for_masks():
    for transform in build_augmentation("heavy", 256):
        inner = transform.transforms if isinstance(transform, A.OneOf) else [transform]
        for t in inner:
            if hasattr(t, "mask_interpolation"):
                assert t.mask_interpolation == 0, type(t).__name__  # cv2.INTER_NEAREST


@pytest.mark.parametrize("bad", ["Heavy", "strong", ""])
def test_unknown_level_is_a_clear_error(bad):
    with pytest.raises(AugmentationError, match=f"unknown augmentation level {bad!r}.*none, light, medium, heavy"):
        build_augmentation(bad, 256)
    with pytest.raises(UNetLabError):
        describe_level(bad)
    assert issubclass(AugmentationError, ValueError)


@pytest.mark.parametrize("patch_size", [0, -5, 2.5, True])
def test_bad_patch_size_is_a_clear_error(patch_size):
    with pytest.raises(AugmentationError, match="patch_size"):
        build_augmentation("light", patch_size)


# ---- alignment, shapes and dtypes -----------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_image_and_masks_stay_aligned(level):
    """After each level's geometric transforms the mask still equals image > 0.5 (up to edge pixels)."""
    mask = blobs((96, 96))
    image = encoding_image(mask)
    instances, _ = ndimage.label(mask)
    transform = build_augmentation(level, 96, seed=1, intensity=False)
    changed = 0
    for _ in range(25):
        new_image, new_mask, new_instances = augment(transform, image, mask, instances)
        assert misaligned_pixels(new_image, new_mask) == 0
        # Edge disagreements stay a thin line: a few percent of the pixels at most.
        assert (new_mask != (new_image[..., 0] > 0.5)).mean() < 0.05
        # Instances move with the mask, by nearest neighbour: no new (interpolated) ids appear.
        np.testing.assert_array_equal(new_instances > 0, new_mask)
        assert set(np.unique(new_instances)) <= set(np.unique(instances))
        changed += not np.array_equal(new_mask, mask)
    assert changed >= (0 if level == "none" else 15)


def test_alignment_check_catches_a_mask_moved_differently():
    """The criterion above fails when the mask gets a different transform from the image."""
    mask = blobs((96, 96))
    image = encoding_image(mask)
    assert misaligned_pixels(image, mask) == 0
    assert misaligned_pixels(image[:, ::-1], mask) > 200
    assert misaligned_pixels(np.roll(image, 4, axis=1), mask) > 50
    rotated = A.Compose([A.Affine(rotate=(10, 10), p=1.0)])(image=image)["image"]
    assert misaligned_pixels(rotated, mask) > 50


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_dtypes_on_an_image_smaller_than_the_patch(level, channels):
    rng = np.random.default_rng(0)
    image = rng.random((100, 130, channels), dtype=np.float32)
    mask = blobs((100, 130))
    instances = ndimage.label(mask)[0].astype(np.uint16)
    transform = build_augmentation(level, 256, seed=0)
    for _ in range(10):
        new_image, new_mask, new_instances = augment(transform, image, mask, instances)
        assert new_image.shape == (100, 130, channels) and new_image.dtype == np.float32
        assert new_mask.shape == (100, 130) and new_mask.dtype == bool
        assert new_instances.shape == (100, 130) and new_instances.dtype == np.uint16
        assert 0.0 <= new_image.min() and new_image.max() <= 1.0
        assert augment(transform, image, mask)[2] is None


def test_non_square_inputs_keep_their_size_under_rotations():
    """Quarter turns would swap height and width: only half turns (and flips) happen."""
    image = np.arange(6 * 9, dtype=np.float32).reshape(6, 9, 1) / 54
    mask = np.zeros((6, 9), dtype=bool)
    transform = build_augmentation("light", 256, seed=0)
    seen = set()
    for _ in range(60):
        out = augment(transform, image, mask)[0]
        seen.add(out.tobytes())
    candidates = {image.tobytes(), image[::-1].tobytes(), image[:, ::-1].tobytes(), image[::-1, ::-1].tobytes()}
    assert seen == candidates


def test_square_inputs_see_all_eight_flips_and_rotations():
    """Catches flips that always fire together (albumentations' Compose(seed=...) pitfall)."""
    image = np.arange(25, dtype=np.float32).reshape(5, 5, 1) / 25
    mask = image[..., 0] > 0.5
    transform = build_augmentation("light", 5, seed=0)
    outcomes = {augment(transform, image, mask)[0].tobytes() for _ in range(100)}
    assert len(outcomes) == 8


def test_intensity_transforms_touch_the_image_only():
    mask = blobs((64, 64))
    image = encoding_image(mask, channels=3)
    for seed in range(10):
        # The first draw of the geometric transforms is the same with or without the intensity ones.
        with_intensity = augment(build_augmentation("heavy", 64, seed=seed), image, mask)
        geometric_only = augment(build_augmentation("heavy", 64, seed=seed, intensity=False), image, mask)
        np.testing.assert_array_equal(with_intensity[1], geometric_only[1])


def test_intensity_changes_are_clipped_to_unit_range():
    image = np.ones((64, 64, 1), dtype=np.float32)
    mask = np.zeros((64, 64), dtype=bool)
    transform = build_augmentation("heavy", 64, seed=3)
    outputs = [augment(transform, image, mask)[0] for _ in range(30)]
    assert all(0.0 <= out.min() and out.max() <= 1.0 for out in outputs)
    assert any(out.min() < 0.99 for out in outputs), "intensity transforms never fired"


def test_none_returns_copies():
    image = np.random.default_rng(0).random((8, 9, 1), dtype=np.float32)
    mask = image[..., 0] > 0.5
    new_image, new_mask, new_instances = augment(None, image, mask)
    np.testing.assert_array_equal(new_image, image)
    np.testing.assert_array_equal(new_mask, mask)
    assert new_instances is None and new_image is not image and new_mask is not mask


def test_inputs_are_not_modified():
    mask = blobs((64, 64))
    image = encoding_image(mask)
    image_before, mask_before = image.copy(), mask.copy()
    transform = build_augmentation("heavy", 64, seed=0)
    for _ in range(5):
        augment(transform, image, mask)
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(mask, mask_before)


@pytest.mark.parametrize(
    "image, mask, instances, message",
    [
        (np.zeros((8, 8), np.float32), np.zeros((8, 8), bool), None, r"image must have shape \(H, W, C\)"),
        (np.zeros((8, 8, 1), np.uint8), np.zeros((8, 8), bool), None, "floating point"),
        (np.zeros((8, 8, 1), np.float32), np.zeros((8, 9), bool), None, r"mask shape \(8, 9\)"),
        (np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), np.uint8), None, "mask must be bool"),
        (np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), bool), np.zeros((7, 8), np.int32), "instances shape"),
        (np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), bool), np.zeros((8, 8), np.float32), "integer labels"),
        (np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), bool), np.full((8, 8), -1, np.int32), "instance labels"),
    ],
)
def test_bad_arrays_are_clear_errors(image, mask, instances, message):
    with pytest.raises(AugmentationError, match=message):
        augment(build_augmentation("light", 8), image, mask, instances)


# ---- seeding --------------------------------------------------------------------------------


def draws(transform, count: int = 6) -> list[np.ndarray]:
    mask = blobs((64, 64))
    image = encoding_image(mask)
    return [augment(transform, image, mask)[0] for _ in range(count)]


@pytest.mark.parametrize("level", LEVELS[1:])
def test_same_seed_same_augmentations(level):
    first = draws(build_augmentation(level, 64, seed=7))
    second = draws(build_augmentation(level, 64, seed=7))
    other = draws(build_augmentation(level, 64, seed=8))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(first, other))


def test_reseeding_restarts_the_stream():
    transform = build_augmentation("heavy", 64, seed=5)
    first = draws(transform)
    set_augmentation_seed(transform, np.int64(5))  # numpy integers work too
    for a, b in zip(first, draws(transform)):
        np.testing.assert_array_equal(a, b)


# ---- preview --------------------------------------------------------------------------------


def test_preview_grid_layout_and_outline():
    mask = blobs((40, 50))
    image = encoding_image(mask)
    grid = preview_grid(image, mask, "medium", n=5, seed=0, patch_size=32, gap=3)
    # 6 tiles of the 32x32 centre patch, 3 columns (ceil(sqrt(6))), 2 rows.
    assert grid.dtype == np.uint8 and grid.shape == (2 * 32 + 3, 3 * 32 + 2 * 3, 3)
    assert (grid[32:35] == 255).all()  # the gap between rows is white
    first = grid[:32, :32]
    patch_mask = mask[4:36, 9:41]
    outline = find_boundaries(patch_mask, mode="inner") & patch_mask
    np.testing.assert_array_equal(first[outline], np.broadcast_to([255, 220, 0], (outline.sum(), 3)))
    grey = np.rint(np.where(patch_mask, 0.75, 0.25) * 255).astype(np.uint8)
    np.testing.assert_array_equal(first[~outline], np.repeat(grey[~outline][:, None], 3, axis=1))
    np.testing.assert_array_equal(grid, preview_grid(image, mask, "medium", n=5, seed=0, patch_size=32, gap=3))
    assert not np.array_equal(grid, preview_grid(image, mask, "medium", n=5, seed=1, patch_size=32, gap=3))


def test_preview_grid_outlines_touching_instances_separately():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 2:18] = True
    instances = np.zeros((20, 20), dtype=np.int32)
    instances[5:15, 2:10] = 1
    instances[5:15, 10:18] = 2
    image = encoding_image(mask)
    plain = preview_grid(image, mask, "none", n=0, patch_size=20)
    split = preview_grid(image, mask, "none", n=0, patch_size=20, instances=instances)
    yellow = np.array([255, 220, 0])
    assert not (plain[8, 9] == yellow).all() and (split[8, 9] == yellow).all()


# ---- python -m core augment-preview ---------------------------------------------------------


@dataclass
class FakeItem:
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray | None
    name: str


@pytest.fixture
def fake_datasets(monkeypatch):
    """Stand in for core.datasets so the CLI is tested on its own."""
    mask = blobs((80, 90))
    items = [FakeItem(encoding_image(mask, 3), mask, ndimage.label(mask)[0], "fake-0")]
    calls = []

    def load_dataset(name, root=None, split="train"):
        calls.append((name, root, split))
        return items

    module = types.ModuleType("core.datasets")
    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "core.datasets", module)
    return calls


def test_augment_preview_cli_writes_a_png(tmp_path, fake_datasets, capsys):
    out = tmp_path / "sub" / "preview.png"
    code = main(["augment-preview", "--dataset", "fake", "--level", "heavy", "--out", str(out), "--n", "3",
                 "--seed", "2", "--patch-size", "64"])
    assert code == 0
    assert fake_datasets == [("fake", None, "train")]
    saved = np.asarray(Image.open(out))
    expected_item = sys.modules["core.datasets"].load_dataset("fake")[0]
    expected = preview_grid(expected_item.image, expected_item.mask, "heavy", n=3, seed=2, patch_size=64,
                            instances=expected_item.instances)
    np.testing.assert_array_equal(saved, expected)
    printed = capsys.readouterr().out
    assert "fake-0" in printed and "GaussNoise" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--level", "wild"], "unknown augmentation level 'wild'"),
        (["--level", "light", "--index", "5"], "--index 5 is out of range"),
        (["--level", "light", "--patch-size", "0"], "patch_size"),
    ],
)
def test_augment_preview_cli_errors_are_one_line(tmp_path, fake_datasets, capsys, extra, message):
    code = main(["augment-preview", "--dataset", "fake", "--out", str(tmp_path / "p.png"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_augment_preview_help_lists_every_level():
    assert core.commands.augment_preview.LEVEL_HELP == ", ".join(LEVELS[:-1]) + " or " + LEVELS[-1]


def test_augment_preview_on_the_builtin_synthetic_set(tmp_path):
    pytest.importorskip("core.datasets", reason="core.datasets is not written yet")
    out = tmp_path / "synthetic.png"
    assert main(["augment-preview", "--dataset", "synthetic-nuclei", "--level", "medium", "--out", str(out),
                 "--n", "2", "--patch-size", "64"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.shape[0] >= 16
