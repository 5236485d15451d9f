"""Named augmentation levels, built with albumentations and applied alike to image and masks.

The training loop first cuts a random patch (``patch_size`` square, or the whole image if
smaller) and then applies a level's transform, which keeps the patch's size. Levels add up:

``none``
    No augmentation.
``light``
    - HorizontalFlip p=0.5
    - VerticalFlip p=0.5
    - RandomRotate90 p=1.0 (quarter turns on square inputs, half turns otherwise, to keep the size)
``medium`` = light +
    - Affine p=0.7: rotate +-45 deg, scale 0.8-1.25 (zoom out/in), shear +-10 deg, reflect border
    - RandomResizedCrop p=0.5: a random window of 50-100 % of the area, aspect 0.8-1.25,
      resized back to the input size
    - RandomBrightnessContrast p=0.5: brightness +-0.2, contrast +-0.2 (image only)
``heavy`` = medium +
    - OneOf p=0.5: ElasticTransform alpha=300 sigma=10 | GridDistortion 5 steps, limit 0.3
      (reflect border)
    - GaussianBlur p=0.3: sigma 0.5-1.5 (image only)
    - GaussNoise p=0.3: std 0.01-0.05 of the [0, 1] range (image only)

This is the list of the U-Net paper: flips, rotations, affine transforms, zooms, crops,
warps, blurring and Gaussian noise. Geometric transforms interpolate the image linearly and
the masks with nearest neighbour (albumentations' default ``mask_interpolation``, set
explicitly here), so labels stay labels. Intensity transforms touch the image only.
:func:`describe_level` lists the same transforms for display.
"""

from __future__ import annotations

import operator
import os
import random
from typing import Any

from core.config import AUGMENTATION_LEVELS

# albumentations asks PyPI for a newer version on every import (up to 2 s offline, and a
# network call the user did not ask for); the variable is its documented opt-out.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.augmentations.geometric import functional as fgeometric  # noqa: E402

from core.errors import AugmentationError  # noqa: E402

LEVELS: tuple[str, ...] = AUGMENTATION_LEVELS  # defined beside RunConfig, which must not import albumentations

# Smallest patch (pixels) that affine, crop and elastic/grid warps apply to; smaller patches
# (from images of a few pixels, which the loaders warn about) get flips and 90° rotations only.
MIN_WARP_PATCH = 16

# Largest instance id a float32 mask channel holds exactly (2**24).
_MAX_EXACT_INSTANCE_ID = 1 << 24



class ShapeKeepingRotate90(A.RandomRotate90):
    """RandomRotate90 that keeps the input size: half turns only on non-square inputs.

    A quarter turn swaps height and width, which would break the "output size = input
    size" contract for the rectangular patches cut from images smaller than the patch size.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        if height == width:
            return {}
        # Map quarter turns (1, 3) onto (0, 2) so the choice stays uniform over what keeps the size.
        return {"factor": params["factor"] & 2}


class RandomResizedCropToInput(A.RandomResizedCrop):
    """RandomResizedCrop whose output size is the size of the incoming image.

    ``size`` (from ``patch_size``) is only the nominal size; images smaller than the patch
    size are cropped within their own extent and resized back to it.
    """

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return self._crop_and_resize(img, crop_coords, params["shape"][:2], self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return self._crop_and_resize(mask, crop_coords, params["shape"][:2], self.mask_interpolation)

    @staticmethod
    def _crop_and_resize(
        array: np.ndarray, crop_coords: tuple[int, int, int, int], shape: tuple[int, int], interpolation: int
    ) -> np.ndarray:
        x_min, y_min, x_max, y_max = crop_coords
        return fgeometric.resize(array[y_min:y_max, x_min:x_max], tuple(shape), interpolation)


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise AugmentationError(f"unknown augmentation level {level!r}; choose one of {', '.join(LEVELS)}")
    return level


def _geometric_transforms(level: str, patch_size: int) -> list[A.BasicTransform]:
    """The level's transforms that move pixels (applied to image and masks)."""
    transforms: list[A.BasicTransform] = []
    if level in ("light", "medium", "heavy"):
        transforms += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), ShapeKeepingRotate90(p=1.0)]
    if patch_size < MIN_WARP_PATCH:
        return transforms  # a few pixels cannot be rotated, cropped or warped (grid steps of 0 pixels)
    if level in ("medium", "heavy"):
        transforms += [
            A.Affine(
                rotate=(-45, 45),
                scale=(0.8, 1.25),
                balanced_scale=True,  # zoom out as often as in
                shear=(-10, 10),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                # Reflection instead of a constant fill: an empty black corner would look
                # like a membrane in EM images.
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            RandomResizedCropToInput(
                size=(patch_size, patch_size),
                scale=(0.5, 1.0),
                ratio=(0.8, 1.25),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=0.5,
            ),
        ]
    if level == "heavy":
        warp_arguments = dict(
            interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_REFLECT_101
        )
        transforms.append(
            A.OneOf(
                [
                    # alpha=300, sigma=10 moves pixels ~2 px on average, up to ~20 px on 256x256.
                    A.ElasticTransform(alpha=300, sigma=10, p=1.0, **warp_arguments),
                    A.GridDistortion(num_steps=5, distort_limit=0.3, p=1.0, **warp_arguments),
                ],
                p=0.5,
            )
        )
    return transforms


def _intensity_transforms(level: str) -> list[A.BasicTransform]:
    """The level's transforms that change grey values only (image only, never masks)."""
    transforms: list[A.BasicTransform] = []
    if level in ("medium", "heavy"):
        transforms.append(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5))
    if level == "heavy":
        transforms += [
            A.GaussianBlur(blur_limit=0, sigma_limit=(0.5, 1.5), p=0.3),
            A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
        ]
    return transforms


def describe_level(level: str) -> list[str]:
    """Human-readable list of the level's transforms, e.g. ``"HorizontalFlip p=0.5"``.

    Raises
    ------
    AugmentationError
        If ``level`` is not one of :data:`LEVELS`.
    """
    _check_level(level)
    return [_describe(t) for t in _geometric_transforms(level, 256) + _intensity_transforms(level)]


def _describe(transform: A.BasicTransform | A.BaseCompose) -> str:
    if isinstance(transform, ShapeKeepingRotate90):
        return f"RandomRotate90 p={transform.p:g} (half turns only on non-square inputs)"
    if isinstance(transform, A.OneOf):
        choices = [_describe(t).replace(f" p={t.p:g}", "", 1) for t in transform.transforms]
        return f"OneOf p={transform.p:g}: " + " | ".join(choices)
    if isinstance(transform, A.Affine):
        scale = transform.scale["x"]
        shear = transform.shear["x"]
        return (
            f"Affine p={transform.p:g}: rotate {transform.rotate[0]:g}..{transform.rotate[1]:g} deg, "
            f"scale {scale[0]:g}..{scale[1]:g}, shear {shear[0]:g}..{shear[1]:g} deg"
        )
    if isinstance(transform, RandomResizedCropToInput):
        return (
            f"RandomResizedCrop p={transform.p:g}: area {transform.scale[0]:g}..{transform.scale[1]:g}, "
            f"aspect {transform.ratio[0]:g}..{transform.ratio[1]:g}, resized back to the input size"
        )
    if isinstance(transform, A.ElasticTransform):
        return f"ElasticTransform p={transform.p:g}: alpha {transform.alpha:g}, sigma {transform.sigma:g}"
    if isinstance(transform, A.GridDistortion):
        limit = transform.distort_limit
        return f"GridDistortion p={transform.p:g}: {transform.num_steps} steps, limit {limit[0]:g}..{limit[1]:g}"
    if isinstance(transform, A.RandomBrightnessContrast):
        b, c = transform.brightness_limit, transform.contrast_limit
        return f"RandomBrightnessContrast p={transform.p:g}: brightness {b[0]:g}..{b[1]:g}, contrast {c[0]:g}..{c[1]:g}"
    if isinstance(transform, A.GaussianBlur):
        sigma = transform.sigma_limit
        return f"GaussianBlur p={transform.p:g}: sigma {sigma[0]:g}..{sigma[1]:g}"
    if isinstance(transform, A.GaussNoise):
        std = transform.std_range
        return f"GaussNoise p={transform.p:g}: std {std[0]:g}..{std[1]:g}"
    return f"{type(transform).__name__} p={transform.p:g}"


def build_augmentation(
    level: str, patch_size: int, seed: int | None = None, intensity: bool = True
) -> A.Compose | None:
    """The albumentations pipeline of an augmentation level (see the module docstring).

    Parameters
    ----------
    level : str
        One of :data:`LEVELS`.
    patch_size : int
        Side of the training patches. Transforms keep whatever size comes in, so smaller
        (or rectangular) inputs work too.
    seed : int, optional
        Same seed, same sequence of augmentations. None draws fresh entropy.
    intensity : bool
        False leaves out the image-only intensity transforms (used to check geometric alignment).

    Returns
    -------
    albumentations.Compose or None
        None for ``"none"``; :func:`augment` accepts either.

    Raises
    ------
    AugmentationError
        If ``level`` is unknown or ``patch_size`` is not a positive integer.
    """
    _check_level(level)
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
        raise AugmentationError(f"patch_size must be a positive integer, got {patch_size!r}")
    if level == "none":
        return None
    transforms = _geometric_transforms(level, int(patch_size))
    if intensity:
        transforms += _intensity_transforms(level)
    transform = A.Compose(transforms)
    if seed is not None:
        set_augmentation_seed(transform, seed)
    return transform


def set_augmentation_seed(transform: A.Compose | None, seed: int) -> None:
    """Restart ``transform``'s random stream from ``seed``.

    One generator is shared by all the transforms in the pipeline. (``A.Compose(seed=...)``
    in albumentations 2.0 gives every transform its *own* generator seeded identically, so
    e.g. the horizontal and vertical flips always fire together.) Call this with a
    different seed in each DataLoader worker, or every worker repeats the same augmentations.
    """
    if transform is not None:
        seed = operator.index(seed)  # random.Random rejects numpy integers
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def augment(
    transform: A.Compose | None,
    image: np.ndarray,
    mask: np.ndarray,
    instances: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Apply one random draw of ``transform`` to an image and its labels, identically.

    Parameters
    ----------
    transform : albumentations.Compose or None
        From :func:`build_augmentation`; None returns copies of the inputs.
    image : ndarray, shape (H, W, C), float
        Intensities in [0, 1].
    mask : ndarray, shape (H, W), bool
        Foreground mask.
    instances : ndarray, shape (H, W), integer, optional
        Instance labels (0 = background).

    Returns
    -------
    image : ndarray, shape (H, W, C), float32, clipped to [0, 1]
    mask : ndarray, shape (H, W), bool
    instances : ndarray, shape (H, W), same dtype as given, or None

    Raises
    ------
    AugmentationError
        If the arrays have the wrong dimensions, dtypes or mismatched sizes.
    """
    image, mask, instances = _checked_arrays(image, mask, instances)
    if transform is None:
        return image.copy(), mask.copy(), None if instances is None else instances.copy()

    # Mask and instances travel as channels of one float32 label array (exact for ids < 2**24),
    # so they undergo the very same nearest-neighbour resampling.
    label_channels = [mask.astype(np.float32)]
    if instances is not None:
        label_channels.append(instances.astype(np.float32))
    labels = np.stack(label_channels, axis=-1)

    result = transform(image=image, mask=labels)
    # Intensity transforms may overshoot [0, 1]; the reshape restores a channel axis of 1
    # in case an OpenCV call dropped it.
    new_image = np.clip(result["image"], 0.0, 1.0).astype(np.float32, copy=False)
    new_image = new_image.reshape(new_image.shape[:2] + image.shape[2:])
    new_labels = result["mask"].reshape(result["mask"].shape[:2] + (len(label_channels),))
    new_mask = new_labels[..., 0] > 0.5
    new_instances = None if instances is None else np.rint(new_labels[..., 1]).astype(instances.dtype)
    return new_image, new_mask, new_instances


def _checked_arrays(
    image: np.ndarray, mask: np.ndarray, instances: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3:
        raise AugmentationError(f"image must have shape (H, W, C), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise AugmentationError(f"image must be floating point in [0, 1], got dtype {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise AugmentationError(f"mask shape {mask.shape} does not match image height and width {image.shape[:2]}")
    if mask.dtype != bool:
        raise AugmentationError(f"mask must be bool, got dtype {mask.dtype}")
    if instances is not None:
        instances = np.asarray(instances)
        if instances.shape != image.shape[:2]:
            raise AugmentationError(
                f"instances shape {instances.shape} does not match image height and width {image.shape[:2]}"
            )
        if not np.issubdtype(instances.dtype, np.integer):
            raise AugmentationError(f"instances must hold integer labels, got dtype {instances.dtype}")
        if instances.size and (instances.min() < 0 or instances.max() >= _MAX_EXACT_INSTANCE_ID):
            raise AugmentationError(f"instance labels must lie in 0..{_MAX_EXACT_INSTANCE_ID - 1}")
    return np.ascontiguousarray(image, dtype=np.float32), mask, instances


# Colour of the mask outline in previews: yellow stands out on grey EM and on stained tissue.
_OUTLINE_RGB = np.array([255, 220, 0], dtype=np.uint8)


def preview_grid(
    image: np.ndarray,
    mask: np.ndarray,
    level: str,
    n: int = 8,
    seed: int = 0,
    patch_size: int = 256,
    instances: np.ndarray | None = None,
    columns: int | None = None,
    gap: int = 4,
) -> np.ndarray:
    """A grid of the image and ``n`` augmented versions, each with its mask outlined.

    The first tile is the unaugmented patch. Like the training loop, the image is first
    cut to a ``patch_size`` square (its centre; the whole image if smaller), then augmented.

    Parameters
    ----------
    image : ndarray, shape (H, W, C), float in [0, 1]
        Grey (C=1) or RGB (C=3); other channel counts show their first channel.
    mask : ndarray, shape (H, W), bool
    level : str
        One of :data:`LEVELS`.
    n : int
        Number of augmented versions.
    seed : int
        Seed of the augmentations.
    instances : ndarray, shape (H, W), integer, optional
        If given, each instance is outlined (touching objects stay distinct).
    columns : int, optional
        Tiles per row; default about the square root of ``n + 1``.
    gap : int
        White pixels between tiles.

    Returns
    -------
    ndarray, shape (rows * (h + gap) - gap, columns * (w + gap) - gap, 3), uint8
        RGB grid, with (h, w) the patch size.
    """
    from skimage.segmentation import find_boundaries

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise AugmentationError(f"n must be a non-negative integer, got {n!r}")
    transform = build_augmentation(level, patch_size, seed=seed)
    image, mask, instances = _checked_arrays(image, mask, instances)
    image, mask, instances = _centre_patch(image, mask, instances, patch_size)

    tiles = []
    for index in range(n + 1):
        if index == 0:
            tile_image, tile_mask, tile_instances = image, mask, instances
        else:
            tile_image, tile_mask, tile_instances = augment(transform, image, mask, instances)
        labels = tile_mask if tile_instances is None else tile_instances
        outline = find_boundaries(labels, mode="inner") & tile_mask
        rgb = _to_rgb_uint8(tile_image)
        rgb[outline] = _OUTLINE_RGB
        tiles.append(rgb)

    columns = columns or int(np.ceil(np.sqrt(n + 1)))
    rows = int(np.ceil(len(tiles) / columns))
    height, width = tiles[0].shape[:2]
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        grid[top : top + height, left : left + width] = tile
    return grid


def _centre_patch(
    image: np.ndarray, mask: np.ndarray, instances: np.ndarray | None, patch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    height, width = mask.shape
    top = max(0, (height - patch_size) // 2)
    left = max(0, (width - patch_size) // 2)
    window = (slice(top, top + patch_size), slice(left, left + patch_size))
    return image[window], mask[window], None if instances is None else instances[window]


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, C) float in [0, 1] -> (H, W, 3) uint8."""
    shown = image if image.shape[2] == 3 else np.repeat(image[..., :1], 3, axis=2)
    return np.rint(np.clip(shown, 0.0, 1.0) * 255).astype(np.uint8)
