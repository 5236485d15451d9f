"""Bad input: every validation raises a DatasetError that names the file and the problem."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from core.datasets import get_spec, load_dataset, read_image
from core.errors import DatasetError, UNetLabError


def raises(match: str):
    return pytest.raises(DatasetError, match=re.escape(match))


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def folder_set(root: Path, n: int = 2, shape=(12, 12)) -> Path:
    for index in range(n):
        save_png(root / "images" / f"im{index}.png", np.full(shape, 50, np.uint8))
        mask = np.zeros(shape, np.uint8)
        mask[2:6, 2:6] = 255
        save_png(root / "masks" / f"im{index}.png", mask)
    return root


def stack_set(root: Path, image_pages: int = 4, label_pages: int = 4, label_shape=(16, 16), labels=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "train-volume.tif", np.zeros((image_pages, 16, 16), np.uint8), photometric="minisblack")
    if labels is None:
        labels = np.zeros((label_pages, *label_shape), np.uint8)
        labels[:, 4:, 4:] = 255
    tifffile.imwrite(root / "train-labels.tif", labels, photometric="minisblack")
    return root


# ---- names, splits, roots, sizes -----------------------------------------------------------


def test_unknown_dataset_lists_known_names():
    with raises("unknown dataset 'isbi2014'; known datasets: synthetic-nuclei"):
        load_dataset("isbi2014")
    with raises("isbi2012, isbi2013"):
        get_spec("nope")


def test_unknown_split_lists_splits():
    with raises("dataset 'synthetic-nuclei' has no split 'test'; its splits are train"):
        load_dataset("synthetic-nuclei", split="test")


def test_missing_root_states_the_expected_layout():
    with raises("dataset 'isbi2012' needs a root folder (--root). Expected layout: a folder with train-volume.tif"):
        load_dataset("isbi2012")


def test_missing_folder(tmp_path):
    with raises(f"{tmp_path / 'absent'}: folder not found (dataset 'epfl'; expected layout: a folder with training.tif"):
        load_dataset("epfl", tmp_path / "absent")


@pytest.mark.parametrize("size", [0, -3, (10,), (10, 0), "128", 12.5, True])
def test_bad_size(size):
    with pytest.raises(DatasetError, match="size must be"):
        load_dataset("synthetic-nuclei", size=size)


# ---- stacks --------------------------------------------------------------------------------


def test_missing_expected_file_names_it_and_the_layout(tmp_path):
    tifffile.imwrite(tmp_path / "train-volume.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    with raises(f"{tmp_path}: missing train-labels.tif for dataset 'isbi2012'. Expected layout:"):
        load_dataset("isbi2012", tmp_path)
    with raises("missing test-volume.tif"):
        load_dataset("isbi2012", tmp_path, split="test")


def test_page_counts_differ(tmp_path):
    stack_set(tmp_path, image_pages=4, label_pages=3)
    with raises(f"{tmp_path / 'train-labels.tif'}: 3 pages but train-volume.tif has 4"):
        load_dataset("isbi2012", tmp_path)


def test_stack_page_sizes_differ(tmp_path):
    stack_set(tmp_path, label_shape=(16, 20))
    with raises("pages are 16x20 but train-volume.tif pages are 16x16 (image/mask size mismatch"):
        load_dataset("isbi2012", tmp_path)


def test_non_binary_label_stack(tmp_path):
    labels = np.zeros((4, 16, 16), np.uint8)
    labels[:, :4], labels[:, 4:8], labels[:, 8:] = 0, 128, 255
    stack_set(tmp_path, labels=labels)
    with raises(f"{tmp_path / 'train-labels.tif'}: labels are not binary: 3 distinct values (0, 128, 255)"):
        load_dataset("isbi2012", tmp_path)


def test_corrupt_stack(tmp_path):
    stack_set(tmp_path)
    (tmp_path / "train-volume.tif").write_bytes(b"II*\x00" + b"\x07" * 100)
    with raises(f"{tmp_path / 'train-volume.tif'}: unreadable or corrupt TIFF stack"):
        load_dataset("isbi2012", tmp_path)


def test_snemi_labels_must_be_ids(tmp_path):
    tifffile.imwrite(tmp_path / "train-input.tif", np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", np.full((2, 8, 8), 0.5, np.float32), photometric="minisblack")
    with raises("neurite labels must be integer ids, got float32"):
        load_dataset("isbi2013", tmp_path)


# ---- folder layout -------------------------------------------------------------------------


def test_missing_images_or_masks_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with raises(f"{tmp_path / 'masks'}: folder not found. Expected layout: a folder with images/ and masks/"):
        load_dataset("folder", tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with raises(f"{tmp_path / 'images'}: empty folder, no PNG, TIFF or JPEG images"):
        load_dataset("folder", tmp_path)


def test_missing_mask_for_an_image(tmp_path):
    folder_set(tmp_path)
    (tmp_path / "masks" / "im1.png").unlink()
    with raises(f"{tmp_path / 'images' / 'im1.png'}: missing mask for image"):
        load_dataset("folder", tmp_path)


def test_image_mask_size_mismatch(tmp_path):
    folder_set(tmp_path)
    save_png(tmp_path / "masks" / "im1.png", np.zeros((12, 10), np.uint8))
    with raises(f"{tmp_path / 'masks' / 'im1.png'}: mask is 12x10 but image im1.png is 12x12 (image/mask size mismatch"):
        load_dataset("folder", tmp_path)


def test_float_mask_is_neither_binary_nor_labels(tmp_path):
    folder_set(tmp_path)
    (tmp_path / "masks" / "im0.png").unlink()
    tifffile.imwrite(tmp_path / "masks" / "im0.tif", np.linspace(0, 1, 144, dtype=np.float32).reshape(12, 12))
    with raises(f"{tmp_path / 'masks' / 'im0.tif'}: mask is neither binary nor a label image: it holds fractional float values"):
        load_dataset("folder", tmp_path)


def test_colour_mask_with_differing_channels(tmp_path):
    folder_set(tmp_path)
    colour = np.zeros((12, 12, 3), np.uint8)
    colour[2:6, 2:6] = (255, 0, 0)
    save_png(tmp_path / "masks" / "im1.png", colour)
    with raises(f"{tmp_path / 'masks' / 'im1.png'}: mask is neither binary nor a label image: a 3-channel mask whose colour channels differ"):
        load_dataset("folder", tmp_path)


def test_negative_label_mask(tmp_path):
    folder_set(tmp_path)
    (tmp_path / "masks" / "im0.png").unlink()
    tifffile.imwrite(tmp_path / "masks" / "im0.tif", np.full((12, 12), -1, np.int16))
    with raises("mask holds negative values"):
        load_dataset("folder", tmp_path)


def test_corrupt_image_file(tmp_path):
    folder_set(tmp_path)
    data = (tmp_path / "images" / "im0.png").read_bytes()
    (tmp_path / "images" / "im0.png").write_bytes(data[: len(data) // 2])
    with raises(f"{tmp_path / 'images' / 'im0.png'}: unreadable or corrupt image file"):
        load_dataset("folder", tmp_path)


def test_two_masks_for_one_image(tmp_path):
    folder_set(tmp_path)
    save_png(tmp_path / "masks" / "im0.tif", np.zeros((12, 12), np.uint8))
    with raises("several masks match it (im0.png, im0.tif)"):
        load_dataset("folder", tmp_path)


# ---- DSB and NCMIR layouts --------------------------------------------------------------------


def dsb_sample(root: Path, sample_id: str = "abc") -> Path:
    sample = root / "stage1_train" / sample_id
    save_png(sample / "images" / f"{sample_id}.png", np.zeros((8, 8, 4), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    save_png(sample / "masks" / "m1.png", mask)
    return sample


def test_dsb_sample_without_masks(tmp_path):
    sample = dsb_sample(tmp_path)
    (sample / "masks" / "m1.png").unlink()
    with raises(f"{sample}: missing mask for image abc.png (no masks/*.png)"):
        load_dataset("dsb2018", tmp_path)


def test_dsb_sample_without_image(tmp_path):
    sample = dsb_sample(tmp_path)
    (sample / "images" / "abc.png").unlink()
    with raises(f"{sample}: missing image file images/abc.png. Expected layout: stage1_train/<id>/images/<id>.png"):
        load_dataset("dsb2018", tmp_path)


def test_dsb_non_binary_nucleus_mask(tmp_path):
    sample = dsb_sample(tmp_path)
    mask = np.zeros((8, 8), np.uint8)
    mask[0, :3] = (1, 2, 3)
    save_png(sample / "masks" / "m2.png", mask)
    with raises(f"{sample / 'masks' / 'm2.png'}: a nucleus mask must be binary (0 and one other value), found values [1, 2, 3]"):
        load_dataset("dsb2018", tmp_path)


def test_dsb_mask_size_mismatch(tmp_path):
    sample = dsb_sample(tmp_path)
    save_png(sample / "masks" / "m2.png", np.zeros((8, 9), np.uint8))
    with raises("mask is 8x9 but image abc.png is 8x8 (image/mask size mismatch"):
        load_dataset("dsb2018", tmp_path)


def test_dsb_empty_folder(tmp_path):
    (tmp_path / "stage1_train").mkdir()
    with raises(f"{tmp_path / 'stage1_train'}: empty folder, no sample folders"):
        load_dataset("dsb2018", tmp_path)


def test_ncmir_missing_label_and_missing_split_folder(tmp_path):
    save_png(tmp_path / "training" / "images" / "images.004.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "training" / "labels").mkdir()
    with raises(f"{tmp_path / 'training' / 'images' / 'images.004.png'}: missing mask for image (expected "):
        load_dataset("ncmir", tmp_path)
    with raises(f"{tmp_path / 'validation' / 'images'}: folder not found (split 'test')"):
        load_dataset("ncmir", tmp_path, split="test")


# ---- read_image ------------------------------------------------------------------------------


def test_read_image_errors(tmp_path):
    with raises(f"{tmp_path / 'none.png'}: file not found"):
        read_image(tmp_path / "none.png")
    with raises("the image given as bytes: unreadable or corrupt image file"):
        read_image(b"definitely not an image")
    with raises("the image given as bytes: empty file"):
        read_image(b"")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8), photometric="minisblack")
    with raises("a stack of 5 pages"):
        read_image(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "wide.tif", np.full((8, 8), 2**20, np.uint32))
    with raises("does not fit 16 bits"):
        read_image(tmp_path / "wide.tif")
    with raises("cannot read an image from a int"):
        read_image(42)


def test_errors_are_unetlab_errors():
    """The CLI prints UNetLabError as one clean line, so every dataset error must be one."""
    assert issubclass(DatasetError, UNetLabError)
