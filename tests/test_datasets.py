"""Loaders (real samples and self-written fixtures), synthetic sets, resizing, the cache, read_image, CLI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from core.datasets import (
    Dataset,
    DatasetSpec,
    Sample,
    describe_dataset,
    get_spec,
    list_datasets,
    load_dataset,
    read_image,
)
from core.datasets import registry, synthetic
from core.paths import PROJECT_ROOT, shared_data_dir

SYNTHETIC = ["synthetic-nuclei", "synthetic-membranes", "synthetic-mitochondria"]


def check_sample_types(sample: Sample, channels: int) -> None:
    """Every Sample honours the documented dtypes, shapes and ranges."""
    assert sample.image.dtype == np.float32 and sample.image.ndim == 3 and sample.image.shape[2] == channels
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
    if sample.mask is not None:
        assert sample.mask.dtype == bool and sample.mask.shape == sample.image.shape[:2]
    if sample.instances is not None:
        assert sample.instances.dtype == np.int32 and sample.instances.shape == sample.image.shape[:2]
        assert sample.instances.min() >= 0
        if sample.mask is not None:
            np.testing.assert_array_equal(sample.instances > 0, sample.mask)


# ---- registry ---------------------------------------------------------------------------


def test_registry_lists_every_source_with_consistent_specs():
    specs = list_datasets()
    names = [spec.name for spec in specs]
    assert names[:3] == SYNTHETIC
    assert set(names) == {*SYNTHETIC, "isbi2012", "isbi2013", "dsb2018", "epfl", "ncmir", "folder", "nnunet", "cellpose"}
    for spec in specs:
        assert isinstance(spec, DatasetSpec)
        assert "train" in spec.splits and "train" in spec.labelled_splits
        assert set(spec.labelled_splits) <= set(spec.splits)
        assert spec.kind in ("membrane", "objects") and spec.layout and spec.positive_class
        assert spec.needs_root == (spec.name not in SYNTHETIC)
    assert get_spec("dsb2018").paper_size == (128, 128)
    assert get_spec("isbi2012").paper_size == (512, 512) and get_spec("isbi2012").positive_class == "cell interior"
    assert get_spec("synthetic-membranes").kind == "membrane"


# ---- synthetic sets ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_sets() -> dict[str, Dataset]:
    """Each synthetic set generated once for the module (no cache involved)."""
    return {name: load_dataset(name, use_cache=False) for name in SYNTHETIC}


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_sets_need_no_files_and_are_deterministic(name, synthetic_sets):
    first = synthetic_sets[name]
    assert isinstance(first, Dataset) and len(first) == 24 and first.channels == 1
    assert first.shapes == [(256, 256)] and first.has_masks and first.has_instances
    # Image k depends only on (name, seed 0, k): regenerating the first two gives the same arrays.
    again = synthetic.generate(name, n_images=2)
    for index in (0, 1):
        check_sample_types(first[index], channels=1)
        np.testing.assert_allclose(first[index].image[:, :, 0], again.images[index][:, :, 0] / 255, atol=1e-6)
        np.testing.assert_array_equal(first[index].instances, again.instances[index])
    assert load_dataset(name, root="/nonexistent", use_cache=False).names == first.names  # root is ignored
    foreground = np.mean([sample.mask.mean() for sample in first])
    assert 0.02 < foreground < 0.98
    assert all(sample.instances.max() >= 1 for sample in first)
    assert first.names[7] == f"{name}[07]"
    # Images differ from one another: generated, not copied.
    assert not np.array_equal(first[0].image, first[1].image)


def test_synthetic_sets_have_their_intended_character(synthetic_sets):
    nuclei, membranes, mitochondria = (synthetic_sets[name] for name in SYNTHETIC)
    # Nuclei are bright objects on a dark ground; membranes are dark lines; mitochondria dark organelles.
    for dataset, positive_brighter in ((nuclei, True), (membranes, True), (mitochondria, False)):
        sample = dataset[0]
        inside, outside = sample.image[sample.mask].mean(), sample.image[~sample.mask].mean()
        assert (inside > outside + 0.1) if positive_brighter else (inside < outside - 0.1)
    assert np.mean([s.mask.mean() for s in membranes]) > 0.7  # interior is the majority, like ISBI 2012
    assert np.mean([s.mask.mean() for s in mitochondria]) < 0.2
    assert np.mean([s.instances.max() for s in nuclei]) > 15


# ---- real samples -----------------------------------------------------------------------


def test_isbi2012(isbi2012_root):
    train = load_dataset("isbi2012", isbi2012_root)
    assert len(train) == 30 and train.shapes == [(512, 512)] and train.channels == 1
    assert train.names[7] == "train-volume[07]"
    sample = train[7]
    check_sample_types(sample, channels=1)
    foreground = np.mean([s.mask.mean() for s in train])
    assert 0.75 < foreground < 0.81  # ~78% interior, ~22% membrane
    raw_labels = tifffile.imread(isbi2012_root / "train-labels.tif")[7]
    np.testing.assert_array_equal(sample.mask, raw_labels == 255)
    np.testing.assert_allclose(sample.image[:, :, 0], tifffile.imread(isbi2012_root / "train-volume.tif")[7] / 255, atol=1e-6)
    assert sample.instances.max() > 50  # many separate cells per slice

    test = load_dataset("isbi2012", isbi2012_root, split="test")
    assert len(test) == 30 and not test.has_masks and test[0].mask is None and test[0].instances is None
    assert test.names[0] == "test-volume[00]"


def test_epfl(epfl_root):
    train = load_dataset("epfl", epfl_root)
    test = load_dataset("epfl", epfl_root, split="test")
    assert (len(train), len(test)) == (16, 8)
    assert train.shapes == test.shapes == [(768, 1024)]
    check_sample_types(train[0], channels=1)
    check_sample_types(test[0], channels=1)
    for dataset in (train, test):
        assert 0.07 < np.mean([s.mask.mean() for s in dataset]) < 0.13  # ~10% mitochondria


@pytest.fixture(scope="module")
def dsb_load(tmp_path_factory):
    """The DSB subset (3,701 PNG masks) decoded once per module, then served from a module cache."""
    data = shared_data_dir()
    if data is None or not (data / "dsb2018").is_dir():
        pytest.skip("real data sample ../shared/data/dsb2018 is absent on this machine")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UNETLAB_CACHE", str(tmp_path_factory.mktemp("dsb-cache")))
        first = load_dataset("dsb2018", data / "dsb2018")
        cached = load_dataset("dsb2018", data / "dsb2018" / "stage1_train")  # same files: same arrays
        yield first, cached


def test_dsb2018(dsb_load):
    dataset, cached = dsb_load
    assert len(dataset) == 83 and dataset.channels == 3
    heights = [shape[0] for shape in dataset.shapes]
    widths = [shape[1] for shape in dataset.shapes]
    assert min(heights) == 256 and max(widths) == 1388
    total = sum(int(dataset[i].instances.max()) for i in range(len(dataset)))
    assert total == 3701
    sample = dataset[0]
    check_sample_types(sample, channels=3)
    assert sample.name == dataset.names[0] and len(sample.name) == 64  # the DSB id
    assert any("overlapping mask pixels" in check for check in dataset.checks)
    assert not dataset.from_cache and cached.from_cache
    np.testing.assert_array_equal(cached[5].instances, dataset[5].instances)


def test_dsb2018_overlap_goes_to_first_mask_in_file_order(tmp_path):
    sample = tmp_path / "stage1_train" / "abc"
    (sample / "images").mkdir(parents=True)
    (sample / "masks").mkdir()
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8)).save(sample / "images" / "abc.png")
    first = np.zeros((8, 8), np.uint8)
    first[1:5, 1:5] = 255
    second = np.zeros((8, 8), np.uint8)
    second[3:7, 3:7] = 255
    Image.fromarray(second).save(sample / "masks" / "b.png")  # written first, sorts second
    Image.fromarray(first).save(sample / "masks" / "a.png")
    loaded = load_dataset("dsb2018", tmp_path)[0]
    assert loaded.image.shape == (8, 8, 3)  # alpha dropped
    assert loaded.instances[3, 3] == 1 and loaded.instances[4, 4] == 1  # overlap kept by a.png
    assert loaded.instances[6, 6] == 2 and loaded.mask.sum() == 16 + 16 - 4


# ---- fixtures in the other layouts -------------------------------------------------------


def write_snemi(root: Path, pages: int = 3) -> np.ndarray:
    """SNEMI3D layout: four neurites (ids up to 70000, so uint32) meeting in the middle."""
    ids = np.zeros((pages, 16, 20), np.uint32)
    ids[:, :8, :10], ids[:, :8, 10:], ids[:, 8:, :10], ids[:, 8:, 10:] = 1000, 2000, 3000, 70000
    pixels = np.random.default_rng(0).integers(0, 255, ids.shape, dtype=np.uint8)
    tifffile.imwrite(root / "train-input.tif", pixels, photometric="minisblack")
    tifffile.imwrite(root / "train-labels.tif", ids, photometric="minisblack")
    return ids


def test_isbi2013_layout(tmp_path):
    write_snemi(tmp_path)
    dataset = load_dataset("isbi2013", tmp_path)
    assert len(dataset) == 3 and dataset.shapes == [(16, 20)]
    sample = dataset[0]
    check_sample_types(sample, channels=1)
    # Membrane: both pixels on either side of each id change, i.e. rows 7-8 and columns 9-10.
    expected = np.ones((16, 20), bool)
    expected[7:9, :] = False
    expected[:, 9:11] = False
    np.testing.assert_array_equal(sample.mask, expected)
    assert sorted(np.unique(sample.instances)) == [0, 1, 2, 3, 4]
    assert sample.instances[0, 0] == 1 and sample.instances[15, 19] == 4  # ids renumbered in order
    info = describe_dataset("isbi2013", tmp_path)
    assert info["splits"]["test"]["available"] is False and "test-input.tif" in info["splits"]["test"]["error"]
    assert info["n_instances"] == 12


def write_palette_png(path: Path, indices: np.ndarray) -> None:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(path)


def write_ncmir(root: Path, split_folder: str, numbers: list[int]) -> None:
    (root / split_folder / "images").mkdir(parents=True)
    (root / split_folder / "labels").mkdir()
    for number in numbers:
        labels = np.zeros((24, 24), np.uint8)
        labels[2:6, 2:10] = 1
        labels[12:20, 14:18] = 1
        Image.fromarray(np.full((24, 24), 10 * number, np.uint8)).save(root / split_folder / "images" / f"images.{number:03d}.png")
        write_palette_png(root / split_folder / "labels" / f"mitos_3D.{number:03d}.png", labels)


def test_ncmir_layout(tmp_path):
    write_ncmir(tmp_path, "training", [0, 1, 2, 10])
    write_ncmir(tmp_path, "validation", [3, 4])
    train = load_dataset("ncmir", tmp_path)
    test = load_dataset("ncmir", tmp_path, split="test")
    assert train.names == ["images.000", "images.001", "images.002", "images.010"]
    assert len(test) == 2 and test.has_masks
    sample = train[3]
    check_sample_types(sample, channels=1)
    assert sample.mask.sum() == 32 + 32 and sample.instances.max() == 2
    assert sample.image[0, 0, 0] == pytest.approx(100 / 255)


def test_folder_layout_with_mixed_images_and_masks(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    grey = np.full((10, 12), 128, np.uint8)
    Image.fromarray(grey).save(images / "a_grey.png")
    Image.fromarray(np.dstack([grey, grey // 2, grey // 4, np.full_like(grey, 9)])).save(images / "b_rgba.png")
    tifffile.imwrite(images / "c_16bit.tif", np.full((10, 12), 65535, np.uint16))
    Image.fromarray(np.dstack([grey] * 3)).save(images / "d.jpg", quality=95)

    binary = np.zeros((10, 12), np.uint8)
    binary[1:4, 1:4] = 255
    binary[6:9, 6:9] = 255
    Image.fromarray(binary).save(masks / "a_grey.png")
    labels = np.zeros((10, 12), np.uint16)
    labels[0:3, 0:3], labels[0:3, 3:6], labels[5:9, 5:9] = 7, 300, 9  # touching instances kept apart
    tifffile.imwrite(masks / "b_rgba.tif", labels)
    tifffile.imwrite(masks / "c_16bit.tif", (binary > 0).astype(np.uint8))  # 0/1 mask
    Image.fromarray(np.dstack([binary] * 3)).save(masks / "d.png")  # grey saved as RGB
    Image.fromarray(binary).save(masks / "unused.png")

    dataset = load_dataset("folder", tmp_path)
    assert dataset.names == ["a_grey", "b_rgba", "c_16bit", "d"]
    assert dataset.channels == 3  # grey images converted to RGB because the folder mixes both
    for sample in dataset:
        check_sample_types(sample, channels=3)
    a, b, c, d = dataset
    assert a.image[0, 0].tolist() == pytest.approx([128 / 255] * 3)
    assert b.image[0, 0].tolist() == pytest.approx([128 / 255, 64 / 255, 32 / 255])
    assert c.image.max() == 1.0  # 16-bit full scale
    assert a.instances.max() == 2 and c.instances.max() == 2
    assert b.instances.max() == 3 and b.instances[0, 0] != b.instances[0, 3]  # labels: kept, renumbered
    assert b.instances[0, 0] == 1 and b.instances[0, 3] == 3 and b.instances[5, 5] == 2  # order of ids 7, 9, 300
    np.testing.assert_array_equal(d.mask, binary > 0)
    assert any("1 masks without an image ignored" in check for check in dataset.checks)


# ---- resizing ---------------------------------------------------------------------------


def test_resize_on_load():
    native = load_dataset("synthetic-nuclei")
    small = load_dataset("synthetic-nuclei", size=128)
    wide = load_dataset("synthetic-nuclei", size=(64, 96))
    assert small.shapes == [(128, 128)] and small.size == (128, 128) and wide.shapes == [(64, 96)]
    check_sample_types(small[0], channels=1)
    check_sample_types(wide[0], channels=1)
    # Images: anti-aliased bilinear, so the mean grey level is preserved; labels nearest, so they stay labels.
    assert small[0].image.mean() == pytest.approx(native[0].image.mean(), abs=0.01)
    assert abs(small[0].mask.mean() - native[0].mask.mean()) < 0.02
    assert set(np.unique(small[0].instances)) <= set(np.unique(native[0].instances))
    assert any("resized to 128x128" in check for check in small.checks)


def test_resize_real_stack_to_paper_size(epfl_root):
    dataset = load_dataset("epfl", epfl_root, size=get_spec("epfl").paper_size)
    assert dataset.shapes == [(512, 512)] and len(dataset) == 16
    assert 0.07 < np.mean([s.mask.mean() for s in dataset]) < 0.13


# ---- cache ------------------------------------------------------------------------------


def make_folder_set(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(3):
        image = np.full((16, 16), 40 * index, np.uint8)
        mask = np.zeros((16, 16), np.uint8)
        mask[: 4 + index, :5] = 255
        Image.fromarray(image).save(root / "images" / f"s{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{index}.png")
    return root


def cache_entries() -> list[Path]:
    return sorted((Path(os.environ["UNETLAB_CACHE"]) / "datasets").glob("*.npz"))


def test_second_load_is_served_from_cache(tmp_path, monkeypatch):
    root = make_folder_set(tmp_path / "set")
    first = load_dataset("folder", root)
    assert not first.from_cache and len(cache_entries()) == 1

    def must_not_decode(plan):
        raise AssertionError("files were decoded again instead of being read from the cache")

    source = registry.SOURCES["folder"]
    monkeypatch.setitem(registry.SOURCES, "folder", type(source)(source.spec, source.plan, must_not_decode))
    second = load_dataset("folder", root)
    assert second.from_cache and second.names == first.names and second.checks == first.checks
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.instances, b.instances)
    # The size option is part of the key.
    monkeypatch.setitem(registry.SOURCES, "folder", source)
    assert not load_dataset("folder", root, size=8).from_cache
    assert load_dataset("folder", root, size=8).from_cache


def test_changed_or_touched_file_invalidates_the_entry(tmp_path):
    root = make_folder_set(tmp_path / "set")
    load_dataset("folder", root)
    mask_path = root / "masks" / "s1.png"
    changed = np.zeros((16, 16), np.uint8)
    changed[10:, 10:] = 255
    Image.fromarray(changed).save(mask_path)
    reloaded = load_dataset("folder", root)
    assert not reloaded.from_cache
    np.testing.assert_array_equal(reloaded[1].mask, changed > 0)
    assert len(cache_entries()) == 1  # the stale entry was replaced, not kept beside the new one

    stat = mask_path.stat()
    os.utime(mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same content
    assert not load_dataset("folder", root).from_cache
    assert load_dataset("folder", root).from_cache


def test_cache_is_bypassed_and_damaged_entries_are_rebuilt(tmp_path):
    root = make_folder_set(tmp_path / "set")
    assert not load_dataset("folder", root, use_cache=False).from_cache
    assert cache_entries() == []
    load_dataset("folder", root)
    entry = cache_entries()[0]
    entry.write_bytes(b"not a zip file")
    again = load_dataset("folder", root)
    assert not again.from_cache and len(again) == 3
    assert load_dataset("folder", root).from_cache
    assert not any(path.name.startswith(".tmp-") for path in entry.parent.iterdir())  # atomic writes leave no temp files


# ---- read_image -------------------------------------------------------------------------


def png_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_read_image_formats(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = read_image(png_bytes(grey))
    assert image.dtype == np.float32 and image.shape == (3, 4, 1)
    np.testing.assert_allclose(image[:, :, 0], grey / 255, atol=1e-7)

    rgba = np.dstack([grey, grey, grey, np.zeros_like(grey)])
    assert read_image(png_bytes(rgba)).shape == (3, 4, 3)  # alpha dropped

    sixteen = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    path = tmp_path / "deep.png"
    Image.fromarray(sixteen).save(path)
    np.testing.assert_allclose(read_image(path)[:, :, 0], sixteen / 65535, atol=1e-6)
    np.testing.assert_allclose(read_image(str(path))[:, :, 0], sixteen / 65535, atol=1e-6)

    tifffile.imwrite(tmp_path / "rgb.tif", np.dstack([grey, grey // 2, grey // 3]), photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").shape == (3, 4, 3)
    tifffile.imwrite(tmp_path / "planar.tif", np.stack([grey, grey // 2, grey // 3]), photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(read_image(tmp_path / "planar.tif")[..., 1], (grey // 2) / 255, atol=1e-7)
    floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    tifffile.imwrite(tmp_path / "float.tif", floats)
    np.testing.assert_allclose(read_image(tmp_path / "float.tif")[:, :, 0], floats)

    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "photo.jpg", quality=100)
    with open(tmp_path / "photo.jpg", "rb") as handle:  # a file object, as from an upload box
        jpeg = read_image(handle)
    assert jpeg.shape == (3, 4, 3) and np.abs(jpeg[:, :, 0] - grey / 255).max() < 0.05


# ---- describe and the CLI -----------------------------------------------------------------


def test_describe_reports_both_splits(isbi2012_root):
    info = describe_dataset("isbi2012", isbi2012_root)
    assert info["n_images"] == 30 and info["shapes"] == [[512, 512]]
    assert 0.75 < info["foreground_fraction"] < 0.81
    assert info["splits"]["test"]["n_images"] == 30 and info["splits"]["test"]["foreground_fraction"] is None
    assert info["n_instances"] > 1000 and info["channels"] == 1 and info["dtype"] == "uint8"
    assert any("page counts match" in check for check in info["checks"])


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", "datasets", *arguments],
        cwd=PROJECT_ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=120,
    )


def test_cli_list_describe_and_errors():
    result = run_cli("describe", "synthetic-nuclei", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout.strip().splitlines()[-1])
    expected_keys = {"name", "root", "n_images", "shapes", "dtype", "channels", "positive_class",
                     "foreground_fraction", "n_instances", "checks", "splits"}
    assert expected_keys <= set(info)
    assert info["name"] == "synthetic-nuclei" and info["root"] is None and info["n_images"] == 24
    assert info["shapes"] == [[256, 256]] and 0 < info["foreground_fraction"] < 1 and info["n_instances"] > 24
    assert info["channels"] == 1 and info["positive_class"] == "nucleus" and info["checks"]

    listing = run_cli("list")
    assert listing.returncode == 0 and "isbi2012" in listing.stdout and "synthetic-nuclei" in listing.stdout
    readable = run_cli("describe", "synthetic-nuclei", "--size", "128")  # resized from the cached set
    assert readable.returncode == 0 and "24 images (128x128)" in readable.stdout and "checks passed" in readable.stdout
    unknown = run_cli("describe", "no-such-set")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "unknown dataset 'no-such-set'" in unknown.stderr and "synthetic-nuclei" in unknown.stderr
    missing_root = run_cli("describe", "isbi2012")
    assert missing_root.returncode == 2 and "train-volume.tif" in missing_root.stderr


def test_resized_load_starts_from_the_cached_native_arrays(tmp_path, monkeypatch):
    root = make_folder_set(tmp_path / "set")
    native = load_dataset("folder", root)
    source = registry.SOURCES["folder"]

    def must_not_decode(plan):
        raise AssertionError("files were decoded again although native arrays were cached")

    monkeypatch.setitem(registry.SOURCES, "folder", type(source)(source.spec, source.plan, must_not_decode))
    small = load_dataset("folder", root, size=(8, 4))
    assert not small.from_cache and small.shapes == [(8, 4)] and small.names == native.names


def test_jpeg_masks_are_thresholded_and_samples_do_not_share_masks(tmp_path):
    root = make_folder_set(tmp_path / "set")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    (root / "masks" / "s0.png").unlink()
    Image.fromarray(mask).save(root / "masks" / "s0.jpg", quality=70)
    dataset = load_dataset("folder", root)
    assert abs(int(dataset[0].mask.sum()) - 64) <= 4 and dataset[0].instances.max() == 1
    dataset[0].mask[:] = False  # editing a returned mask leaves the dataset intact
    assert dataset[0].mask.any()


def test_ncmir_slices_in_numeric_order_without_zero_padding(tmp_path):
    """Validation is a contiguous block of slices, so slice 10 must follow slice 9, not slice 1."""
    write_ncmir(tmp_path, "training", [0])
    for number in (1, 2, 9, 10, 11):
        labels = np.zeros((24, 24), np.uint8)
        labels[2:6, 2:10] = 1
        Image.fromarray(np.full((24, 24), number, np.uint8)).save(tmp_path / "training" / "images" / f"images.{number}.png")
        write_palette_png(tmp_path / "training" / "labels" / f"mitos_3D.{number}.png", labels)
    names = load_dataset("ncmir", tmp_path).names
    assert names == ["images.000", "images.1", "images.2", "images.9", "images.10", "images.11"]
