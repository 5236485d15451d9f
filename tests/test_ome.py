"""OME-TIFF and OME-Zarr (multi-channel z-stacks written here), block-by-block prediction of an OME-Zarr
image with its labels written back, and the nnU-Net and Cellpose folder layouts."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

zarr = pytest.importorskip("zarr", reason="zarr is not installed (pip install -e .)")

from core.datasets import load_dataset  # noqa: E402
from core.datasets.io import read_label_image, read_raw_image, read_upload, upload_layout  # noqa: E402
from core.datasets.ome import Plane, open_ome_zarr  # noqa: E402
from core.errors import DatasetError, DatasetWarning  # noqa: E402
from core.paths import PROJECT_ROOT  # noqa: E402

C, Z, H, W = 2, 4, 150, 130


def stack() -> np.ndarray:
    """uint16 (C, Z, H, W): every plane different, so a wrong plane is seen."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, size=(C, Z, H, W), dtype=np.uint16)
    for c in range(C):
        for z in range(Z):
            data[c, z, 0, 0] = 1000 * c + z  # a fingerprint of the plane
    return data


def write_ome_tiff(path: Path, data: np.ndarray) -> Path:
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CZYX"})
    return path


def write_ome_zarr(path: Path, data: np.ndarray, axes: str = "czyx", zarr_format: int = 2, chunk: int = 64) -> Path:
    """An OME-Zarr image as NGFF writers lay it out: 0.4 on zarr v2, 0.5 (under "ome") on zarr v3."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    chunks = tuple(chunk if axis in "yx" else 1 for axis in axes)
    array = group.create_array("0", shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[...] = data
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    multiscales = [{"axes": [{"name": a, "type": types[a]} for a in axes],
                    "datasets": [{"path": "0", "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0 if a in "tc" else 0.5 for a in axes]}]}]}]
    if zarr_format == 2:
        group.attrs.update({"multiscales": [{"version": "0.4", **multiscales[0]}]})
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    return path


# ---- OME-TIFF -------------------------------------------------------------------------------------


def test_ome_tiff_gives_the_chosen_channel_and_plane(tmp_path):
    data = stack()
    path = write_ome_tiff(tmp_path / "cells.ome.tif", data)
    image = read_raw_image(path, plane=Plane(channel=1, z=3))
    assert image.shape == (H, W, 1) and image.dtype == np.uint16
    assert np.array_equal(image[:, :, 0], data[1, 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        default = read_raw_image(path)
    assert np.array_equal(default[:, :, 0], data[0, 0])
    said = " ".join(str(w.message) for w in caught)
    assert "2 channels; channel 0 read" in said and "4 z-planes; plane 0 read" in said
    with pytest.raises(DatasetError, match="z-plane 7 does not exist; the file has 4"):
        read_raw_image(path, plane=Plane(z=7))

    # The Segment page's reader: the layout for a picker, then the chosen plane, as float in [0, 1].
    payload = path.read_bytes()
    assert upload_layout("cells.ome.tif", payload).choices == {"c": 2, "z": 4}
    uploaded = read_upload("cells.ome.tif", payload, plane=Plane(channel=0, z=2))
    assert uploaded.dtype == np.float32 and np.allclose(uploaded[:, :, 0], data[0, 2] / 65535)
    with pytest.raises(DatasetError, match="over the limit"):
        read_upload("cells.ome.tif", payload, max_pixels=H * W)  # one plane of 2 channels is 2 H W
    # A plain multi-page TIFF stack is still refused where one image is expected (no plane asked).
    tifffile.imwrite(tmp_path / "plain.tif", data[0], photometric="minisblack")
    with pytest.raises(DatasetError, match="a stack of 4 pages"):
        read_raw_image(tmp_path / "plain.tif")
    assert np.array_equal(read_raw_image(tmp_path / "plain.tif", plane=Plane(z=2))[:, :, 0], data[0, 2])


# ---- OME-Zarr -------------------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_gives_the_chosen_channel_and_plane(tmp_path, zarr_format):
    data = stack()[:, None]  # (C, T=1, Z, H, W) -> axes "ctzyx" are unusual: use tczyx
    data = np.moveaxis(data, 1, 0)  # (T, C, Z, H, W)
    path = write_ome_zarr(tmp_path / "cells.ome.zarr", data, axes="tczyx", zarr_format=zarr_format)
    image = read_raw_image(path, plane=Plane(channel=1, z=2))
    assert image.shape == (H, W, 1) and np.array_equal(image[:, :, 0], data[0, 1, 2])
    assert open_ome_zarr(path).layout().choices == {"c": 2, "z": 4}
    with pytest.raises(DatasetError, match="channel 5 does not exist"):
        read_raw_image(path, plane=Plane(channel=5))

    # Zipped into one file, as the Segment page receives it.
    archive = tmp_path / "cells.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in path.rglob("*"):
            if file.is_file():
                zipped.write(file, str(file.relative_to(tmp_path)))
    payload = archive.read_bytes()
    assert upload_layout("cells.zip", payload).choices == {"c": 2, "z": 4}
    uploaded = read_upload("cells.zip", payload, as_float=False, plane=Plane(channel=1, z=3))
    assert np.array_equal(uploaded[:, :, 0], data[0, 1, 3])


class Pointwise(torch.nn.Module):
    """A 'network' whose logit depends on its pixel only: block-by-block and whole-image results
    must then be identical, so any seam or merge error shows."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=1, keepdim=True) - 0.5) * 40 * self.weight


def blobs(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W): bright disks and a long diagonal bar that crosses several blocks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width), np.uint8)
    for _ in range(25):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 14)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 220
    image[np.abs(yy - xx) <= 2] = 200  # touches blocks only diagonally at their corners: 8-connectivity matters
    return image


def test_an_ome_zarr_image_is_predicted_block_by_block_and_its_labels_read_back(tmp_path):
    from skimage.measure import label as connected_components

    from core.config import RunConfig
    from core.inference import LoadedModel
    from core.ome_predict import predict_ome_zarr

    planes = np.stack([np.stack([blobs(300, 260, seed=z + 10 * c) for z in range(3)]) for c in range(2)])  # (C, Z, H, W)
    path = write_ome_zarr(tmp_path / "big.ome.zarr", planes, axes="czyx", chunk=50)
    loaded = LoadedModel(model=Pointwise().eval(), config=RunConfig(tile_size=64), channels=1, epoch=0,
                         device=torch.device("cpu"), precision="fp32")
    reads = []

    class Counting:
        """The image's zarr array, recording the size of every read."""

        def __init__(self, array):
            self.array, self.shape, self.ndim, self.dtype = array, array.shape, array.ndim, array.dtype

        def __getitem__(self, index):
            out = self.array[index]
            reads.append(int(np.prod(out.shape)))
            return out

    result = predict_ome_zarr(loaded, path, Plane(channel=1, z=2), name="cells", block=64, halo=16,
                              connectivity=2, reader=Counting)
    assert result.blocks == 5 * 5 and max(reads) <= (64 + 2 * 16) ** 2 < 300 * 260  # never the whole plane
    assert result.largest_read == max(reads)

    labels_path = path / "labels" / "cells"
    labels = open_ome_zarr(labels_path)  # the labels group is an OME-Zarr image of its own
    assert labels.axes == "zyx" and labels.shape == (3, 300, 260)
    written = labels.read(Plane(z=2))[:, :, 0]
    expected = connected_components(planes[1, 2] / 255 >= 0.5, connectivity=2)
    assert result.objects == expected.max() == written.max() and set(np.unique(written)) == set(range(written.max() + 1))
    # The same objects: every written object is exactly one expected object (a bijection).
    pairs = np.unique(np.stack([written.ravel(), expected.ravel()]), axis=1)
    assert pairs.shape[1] == expected.max() + 1 and np.array_equal(written > 0, expected > 0)
    assert not labels.read(Plane(z=0)).any()  # planes not predicted stay empty
    meta = json.loads((path / "labels" / ".zattrs").read_text())
    assert meta["labels"] == ["cells"]
    label_meta = json.loads((labels_path / ".zattrs").read_text())
    assert label_meta["image-label"]["source"]["image"] == "../../"
    assert label_meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5, 0.5]


def test_predict_command_segments_an_ome_zarr_image_and_an_ome_tiff(tmp_path):
    from core.checkpoints import save_checkpoint
    from core.config import RunConfig
    from core.model import UNet

    config = RunConfig(base_width=4, depth=2, tile_size=64, precision="fp32", device="cpu")
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "best.pt", {"state_dict": UNet(1, 4, 2).state_dict(),
                                                        "config": config.to_dict(), "in_channels": 1, "epoch": 0})
    planes = np.stack([np.stack([blobs(120, 100, seed=z) for z in range(2)]) for _ in range(2)])
    zarr_path = write_ome_zarr(tmp_path / "in.ome.zarr", planes, axes="czyx", chunk=32)
    tiff_path = tmp_path / "in.ome.tif"
    tifffile.imwrite(tiff_path, planes, ome=True, metadata={"axes": "CZYX"})
    out = tmp_path / "out"
    for source in (zarr_path, tiff_path):
        process = subprocess.run([sys.executable, "-m", "core", "predict", "--checkpoint", str(checkpoint),
                                  "--input", str(source), "--output", str(out), "--channel", "1", "--z", "1",
                                  "--block", "48", "--scale", "native"],
                                 cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert process.returncode == 0, process.stderr[-1500:]
    written = json.loads((out / "zarr_predictions.json").read_text())
    assert written[0]["labels"] == "labels/unetlab-components" and written[0]["blocks"] == 9
    labels = open_ome_zarr(zarr_path / "labels" / "unetlab-components").read(Plane(z=1))
    assert labels.shape == (120, 100, 1) and labels.max() == written[0]["objects"]
    assert read_label_image(out / "in_labels-components.png").shape == (120, 100)  # the OME-TIFF, as before


# ---- dataset layouts --------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_nnunet_layout_loads_with_classes_as_one_positive_class(tmp_path):
    root = tmp_path / "Dataset001_Cells"
    (root / "dataset.json").parent.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                   "labels": {"background": 0, "nucleus": 1, "border": 2},
                                                   "file_ending": ".png"}))
    rng = np.random.default_rng(0)
    for case in ("c1", "c2"):
        for channel in range(3):
            save(root / "imagesTr" / f"{case}_{channel:04d}.png", (rng.random((40, 48)) * 255).astype(np.uint8))
        labels = np.zeros((40, 48), np.uint8)
        labels[5:15, 5:15], labels[15:20, 5:15], labels[25:35, 30:40] = 1, 2, 1  # two classes touch: one object
        save(root / "labelsTr" / f"{case}.png", labels)
    (root / "imagesTr" / "c1_0000.png").with_name("notes.txt").write_text("ignored")
    dataset = load_dataset("nnunet", root, use_cache=False)
    assert len(dataset) == 2 and dataset.channels == 3 and dataset.names == ["c1", "c2"]
    sample = dataset[0]
    assert sample.mask.sum() == 100 + 50 + 100 and sample.instances.max() == 2  # classes are not objects
    assert any("class ids [0, 1, 2]" in check for check in dataset.checks)
    (root / "labelsTr" / "c2.png").unlink()
    with pytest.raises(DatasetError, match="missing label file"):
        load_dataset("nnunet", root, use_cache=False)


def test_cellpose_layout_loads_masks_beside_images(tmp_path):
    root = tmp_path / "cellpose"
    rng = np.random.default_rng(0)
    for folder, names in ((root, ("a", "b")), (root / "test", ("t",))):
        for name in names:
            save(folder / f"{name}.png", (rng.random((32, 40)) * 255).astype(np.uint8))
            labels = np.zeros((32, 40), np.uint16)
            labels[2:10, 2:10], labels[10:20, 2:10], labels[20:30, 20:30] = 1, 2, 3  # 1 and 2 touch
            tifffile.imwrite(folder / f"{name}_masks.tif", labels)
    tifffile.imwrite(root / "a_flows.tif", np.zeros((3, 32, 40), np.float32))  # Cellpose's own output: ignored
    train = load_dataset("cellpose", root, use_cache=False)
    assert train.names == ["a", "b"] and train[0].instances.max() == 3  # instance labels kept, not re-split
    test = load_dataset("cellpose", root, split="test", use_cache=False)
    assert test.names == ["t"] and test.has_masks
    (root / "b_masks.tif").unlink()
    with pytest.raises(DatasetError, match="missing mask for image"):
        load_dataset("cellpose", root, use_cache=False)


def test_folder_dataset_reads_ome_files_at_the_plane_unetlab_json_names(tmp_path):
    root = tmp_path / "ome"
    (root / "images").mkdir(parents=True)
    data = stack()
    write_ome_tiff(root / "images" / "one.ome.tif", data)
    write_ome_zarr(root / "images" / "two.ome.zarr", data, axes="czyx")
    mask = np.zeros((H, W), np.uint8)
    mask[10:40, 10:50] = 255
    save(root / "masks" / "one.png", mask)
    save(root / "masks" / "two.png", mask)
    (root / "unetlab.json").write_text(json.dumps({"channel": 1, "z": 3}))
    dataset = load_dataset("folder", root)
    assert dataset.names == ["one", "two"]
    for index in range(2):
        assert np.allclose(dataset[index].image[:, :, 0], data[1, 3] / 65535)
    assert any("channel 1, z 3" in check for check in dataset.checks)
    (root / "unetlab.json").write_text(json.dumps({"channel": 0, "z": 1}))  # a new choice is read again
    assert np.allclose(load_dataset("folder", root)[0].image[:, :, 0], data[0, 1] / 65535)
    (root / "unetlab.json").write_text(json.dumps({"channel": -1}))
    with pytest.raises(DatasetError, match="non-negative integer"):
        load_dataset("folder", root)
