"""Tests of core.user_datasets: registering a folder as a dataset, and how the pages list it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.datasets import list_datasets
from core.errors import DatasetError
from core.tables import DatasetChoice, dataset_choices, datasets_table
from core.user_datasets import load_user_datasets, register_user_dataset, user_datasets_path


def write_folder(root: Path, n: int = 3) -> Path:
    """A folder dataset of ``n`` 32 x 32 images with one rectangle each (images/ + masks/)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i:12 + i, 5:15] = 255
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
    return root


def test_register_user_dataset_checks_the_folder_and_lists_it(tmp_path):
    root = write_folder(tmp_path / "mine")
    entry = register_user_dataset("folder", root)
    assert entry.root == str(root.resolve()) and entry.dataset == "folder"
    again = register_user_dataset("folder", str(root))  # registering twice keeps one entry
    listed = load_user_datasets()
    assert [e.root for e in listed] == [str(root.resolve())] and listed[0].label == again.label

    choices = dataset_choices(list_datasets(), listed)
    assert choices[0].dataset == "synthetic-nuclei" and choices[0].root is None
    assert choices[-1] == DatasetChoice(entry.label, "folder", str(root.resolve()))
    assert all(c.dataset not in ("isbi2012", "folder") for c in choices[:-1])  # they need a folder
    table = datasets_table(list_datasets(), listed)
    assert table.iloc[-1]["Folder"] == str(root.resolve())


def test_register_user_dataset_reports_the_loaders_error(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        register_user_dataset("folder", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError):
        register_user_dataset("folder", tmp_path / "empty")
    assert load_user_datasets() == []


def test_the_list_is_written_whole_and_an_unreadable_one_counts_as_empty(tmp_path):
    register_user_dataset("folder", write_folder(tmp_path / "a"))
    register_user_dataset("folder", write_folder(tmp_path / "b"), label="second")
    path = user_datasets_path()
    assert [entry.label for entry in load_user_datasets()] == ["folder: a", "second"]
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left
    path.write_text("{not json")
    assert load_user_datasets() == []


def test_a_damaged_list_is_kept_aside_not_overwritten(tmp_path):
    from core.user_datasets import damaged_list_message, damaged_lists, load_user_datasets, register_user_dataset

    path = tmp_path / "user_datasets.json"
    path.write_text('[{"label": "mine", "dataset": "folder", "root": "/data/mine"')  # cut off mid-write
    assert load_user_datasets(path) == []
    kept = damaged_lists(path)
    assert len(kept) == 1 and "/data/mine" in kept[0].read_text() and not path.exists()
    assert str(kept[0]) in damaged_list_message(path)
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    import numpy as np
    from PIL import Image

    for name in ("a", "b"):
        Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(folder / "images" / f"{name}.png")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(folder / "masks" / f"{name}.png")
    register_user_dataset("folder", folder, path=path)
    assert [entry.root for entry in load_user_datasets(path)] == [str(folder.resolve())]
    assert "/data/mine" in kept[0].read_text()  # the damaged list is still there to read
    path.write_text('{"not": "a list"}')
    assert load_user_datasets(path) == [] and len(damaged_lists(path)) == 2
