"""Tests of core.corrections (object edits, the canvas's mask, corrections folders, fine-tuning
settings) and of core.segment's batch results (the zip and its objects table, stacks)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from core import corrections
from core.config import RunConfig
from core.errors import DatasetError
from core.segment import SegmentedImage, mismatch_warnings, image_facts, objects_table, read_upload_planes, results_zip


def three_objects() -> np.ndarray:
    labels = np.zeros((40, 40), np.uint16)
    labels[5:15, 5:15], labels[5:15, 16:26], labels[25:35, 5:35] = 1, 2, 3
    return labels


def test_delete_merge_and_split_objects():
    labels = three_objects()
    assert corrections.object_ids(corrections.delete_objects(labels, [2])) == [1, 3]
    merged = corrections.merge_objects(labels, [1, 2])
    assert corrections.object_ids(merged) == [1, 3] and (merged == 1).sum() == 200 + 10  # the 1-pixel gap joins
    split = corrections.split_object(labels, 3)
    assert corrections.object_ids(split) == [1, 2, 3, 4] and (split == 3).sum() + (split == 4).sum() == 300


def test_the_canvas_mask_round_trips_and_painted_pixels_become_objects():
    labels = three_objects()
    url = corrections.mask_data_url(labels > 0)
    assert np.array_equal(corrections.mask_from_data_url(url, labels.shape), labels > 0)
    assert corrections.mask_from_data_url(url, (80, 80)).sum() == 4 * (labels > 0).sum()  # scaled up
    painted = labels > 0
    painted[20:23, 36:39] = True  # a new object
    painted[5:15, 5:15] = False  # object 1 erased
    out = corrections.with_mask(labels, painted)
    assert corrections.object_ids(out) == [2, 3, 4] and (out == 4).sum() == 9
    with pytest.raises(Exception, match="no PNG"):
        corrections.mask_from_data_url("data:text/plain,hello", (4, 4))


def test_a_corrections_folder_registers_at_two_pairs_and_loads(tmp_path):
    from core.datasets import load_dataset

    folder = corrections.corrections_folder("my set!")
    assert folder.name == "my-set"
    image = np.random.default_rng(0).random((40, 40, 1)).astype(np.float32)
    corrections.save_pair(folder, "a", image, three_objects())
    assert not corrections.register_corrections(folder).ready
    corrections.save_pair(folder, "b", image, three_objects() > 0)
    registered = corrections.register_corrections(folder)
    assert registered.ready and registered.label == "corrections: my-set" and registered.pairs == 2
    loaded = load_dataset("folder", str(folder), split="train")
    assert len(loaded) == 2 and int(loaded[0].instances.max()) == 3


def test_fine_tuning_settings_start_from_the_model():
    base = RunConfig(base_width=8, depth=3, patch_size=64, batch_size=2, epochs=3, steps_per_epoch=2, study="s")
    config = corrections.fine_tune_config(base, corrections.init_from_name("starter:starter-nuclei"),
                                          corrections.corrections_folder("x"), epochs=2)
    assert (config.dataset, config.base_width, config.depth, config.patch_size, config.epochs) == ("folder", 8, 3, 64, 2)
    assert config.init_from == "starter-nuclei"
    assert config.study is None and config.train_fraction == 0.8


def test_the_zip_holds_masks_labels_and_object_counts():
    labels = three_objects()
    results = [SegmentedImage("a.png", None, labels > 0, labels, 0.1), SegmentedImage("s.tif", 2, labels > 1,
                                                                                       labels * (labels > 1), 0.1)]
    archive = zipfile.ZipFile(io.BytesIO(results_zip(results, "test")))
    assert sorted(archive.namelist()) == sorted(["masks/a_mask.png", "labels/a_labels.png", "masks/s_z002_mask.png",
                                                 "labels/s_z002_labels.png", "objects.csv", "object_areas.csv",
                                                 "README.txt"])
    table = pd.read_csv(io.BytesIO(archive.read("objects.csv")))
    assert list(table["Objects"]) == [3, 2] and list(table["Foreground pixels"]) == [500, 400]
    areas = pd.read_csv(io.BytesIO(archive.read("object_areas.csv")))
    assert len(areas) == 5 and areas["Area (pixels)"].sum() == 900
    assert objects_table(results).loc[0, "Median object area (pixels)"] == 100


def test_stacks_are_read_plane_by_plane_and_errors_name_the_file():
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, (np.random.default_rng(0).random((5, 30, 20)) * 255).astype(np.uint8))
    assert read_upload_planes("z.tif", buffer.getvalue()).shape == (5, 30, 20, 1)
    with pytest.raises(DatasetError, match="z.tif") as error:
        read_upload_planes("z.tif", buffer.getvalue()[:300])
    assert "<uploaded bytes>" not in str(error.value) and "given as bytes" not in str(error.value)


def test_an_image_unlike_the_training_images_is_named():
    grey = image_facts(np.full((64, 64, 1), 0.2, np.float32) + np.linspace(0, 0.3, 64)[None, :, None],
                       None, np.zeros((64, 64), bool))
    colour = image_facts(np.random.default_rng(0).random((64, 64, 3)), None, np.ones((64, 64), bool))
    warnings = mismatch_warnings(grey, colour)
    assert any(w.startswith("channels") for w in warnings) and any(w.startswith("foreground") for w in warnings)
    assert mismatch_warnings(grey, grey) == []
