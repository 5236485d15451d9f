"""One path from prediction to score: predict a folder with several methods, score it as it is,
and get evaluate's numbers; a run trained on resized images is applied at its training scale."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.config import RunConfig
from core.datasets import load_dataset, split
from core.evaluate import evaluate_run
from core.runs import Registry
from core.train import train_run

TINY = dict(epochs=1, steps_per_epoch=3, batch_size=2, patch_size=64, base_width=4, depth=2, tile_size=128,
            train_fraction=0.5)


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    """12 synthetic nuclei images of 128 x 128 as 8-bit PNGs, with 16-bit label images as masks."""
    root = tmp_path_factory.mktemp("folder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    source = load_dataset("synthetic-nuclei", size=128)
    for index in range(12):
        sample = source[index]
        Image.fromarray(np.rint(sample.image[:, :, 0] * 255).astype(np.uint8)).save(root / "images" / f"cell{index:02d}.png")
        Image.fromarray(sample.instances.astype(np.uint16)).save(root / "masks" / f"cell{index:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(folder_dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("honest")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETLAB_CACHE", str(base / "cache"))
    mp.setenv("UNETLAB_CHECKPOINTS", str(base / "checkpoints"))
    registry = Registry()
    native = train_run(RunConfig(dataset="folder", root=str(folder_dataset), **TINY), registry=registry,
                       show_progress=False)
    resized = train_run(RunConfig(dataset="folder", root=str(folder_dataset), image_size=64, **TINY),
                        registry=registry, show_progress=False)
    yield registry, native, resized
    mp.undo()


def validation_folders(root, config: RunConfig, out):
    """The run's validation images and their truth, copied into two folders (same stems)."""
    dataset = load_dataset("folder", str(root))
    indices = split(dataset, config.train_fraction, config.seed, config.validation_fraction).validation
    (out / "images").mkdir(parents=True)
    (out / "truth").mkdir()
    for index in indices:
        name = dataset.names[index]
        shutil.copy(root / "images" / f"{name}.png", out / "images")
        shutil.copy(root / "masks" / f"{name}.png", out / "truth")
    return out / "images", out / "truth"


def test_predict_a_folder_with_several_methods_and_score_it_as_evaluate_does(trained, folder_dataset, tmp_path,
                                                                             capsys):
    registry, run, _ = trained
    record = registry.get_run(run.run_id)
    evaluation = evaluate_run(run.run_id, registry=registry, methods=("components", "watershed"),
                              show_progress=False, store=False)
    images, truth = validation_folders(folder_dataset, record.config, tmp_path)
    out = tmp_path / "predicted"
    checkpoint = str(record.best_checkpoint)
    assert main(["predict", "--checkpoint", checkpoint, "--input", str(images), "--output", str(out),
                 "--instances", "components,watershed", "--truth", str(truth)]) == 0
    printed = capsys.readouterr().out
    assert "components" in printed and "watershed" in printed
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["methods"] == ["components", "watershed"] and manifest["kind"] == "objects"
    for image in manifest["images"]:
        assert set(image["labels"]) == {"components", "watershed"} and image["scale"] == "native"

    # score takes predict's folder unchanged, every method side by side
    assert main(["score", "--truth", str(truth), "--prediction", str(out), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from core.metrics import METRIC_NAMES

    for method in ("components", "watershed"):
        ours, stored = scored["methods"][method], evaluation.summary["instances"][method]
        assert ours["n_images"] == evaluation.summary["n_images"]
        for key in ("dsb_map", "paper_map", "ap50"):
            assert ours[METRIC_NAMES[key]] == pytest.approx(stored[key], abs=1e-9), (method, key)
        assert ours["counts"] == {"tp": stored["tp50"], "fp": stored["fp50"], "fn": stored["fn50"]}

    # one method only, and an unknown one is refused before any model is loaded
    assert main(["score", "--truth", str(truth), "--prediction", str(out), "--method", "watershed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "watershed"
    assert main(["predict", "--checkpoint", "no-such.pt", "--input", str(images), "--output", str(tmp_path / "x"),
                 "--instances", "foo"]) == 2
    assert "foo" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_score_and_evaluate_count_the_same_objects(trained, folder_dataset, tmp_path, capsys):
    """Binary truth masks become objects by one rule everywhere (8-connected for objects)."""
    registry, run, _ = trained
    record = registry.get_run(run.run_id)
    images, truth = validation_folders(folder_dataset, record.config, tmp_path)
    binary_truth = tmp_path / "binary"
    binary_truth.mkdir()
    for path in truth.iterdir():  # masks holding only 0/255: objects come from the connectivity rule
        Image.fromarray(((np.asarray(Image.open(path)) > 0) * 255).astype(np.uint8)).save(binary_truth / path.name)
    binary_root = tmp_path / "binary_dataset"
    shutil.copytree(images, binary_root / "images")
    shutil.copytree(binary_truth, binary_root / "masks")
    loaded = load_dataset("folder", str(binary_root))
    truth_objects = sum(int(loaded[i].instances.max()) for i in range(len(loaded)))
    out = tmp_path / "predicted"
    assert main(["predict", "--checkpoint", str(record.best_checkpoint), "--input", str(images),
                 "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["score", "--truth", str(binary_truth), "--prediction", str(out), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counts = scored["counts"]
    assert counts["tp"] + counts["fn"] == truth_objects


def test_predict_applies_the_training_scale_and_the_override_works(trained, folder_dataset, tmp_path, capsys):
    from core.inference import load_model, predict_image

    registry, _, resized = trained
    record = registry.get_run(resized.run_id)
    assert record.config.image_size == 64
    loaded = load_model(record.best_checkpoint, device="cpu")
    image = load_dataset("folder", str(folder_dataset))[0].image
    assert image.shape[:2] == (128, 128)
    default = predict_image(loaded, image)
    assert default.network_shape == (64, 64) and default.probability.shape == (128, 128)
    assert default.scale == "training" and "64 x 64" in default.scale_note()
    native = predict_image(loaded, image, scale="native")
    assert native.network_shape == (128, 128) and native.probability.shape == (128, 128)
    assert not np.array_equal(default.probability, native.probability)

    for scale, network in (("training", [64, 64]), ("native", [128, 128])):
        out = tmp_path / scale
        assert main(["predict", "--checkpoint", str(record.best_checkpoint), "--input",
                     str(folder_dataset / "images" / "cell00.png"), "--output", str(out), "--scale", scale]) == 0
        entry = json.loads((out / "predictions.json").read_text())["images"][0]
        assert entry["network_shape"] == network and entry["shape"] == [128, 128]
        assert np.asarray(Image.open(out / entry["labels"]["components"])).shape == (128, 128)
    assert "training scale" in capsys.readouterr().out


def test_segment_page_applies_the_training_scale(trained, folder_dataset, monkeypatch):
    from streamlit.testing.v1 import AppTest

    registry, _, resized = trained
    monkeypatch.setenv("UNETLAB_CACHE", str(registry.path.parent))
    from core.paths import PROJECT_ROOT

    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "5_Segment.py"), default_timeout=120).run()
    at.selectbox(key="segment_run").set_value(resized.run_id).run()
    data = (folder_dataset / "images" / "cell00.png").read_bytes()
    at.file_uploader(key="upload").set_value(("cell00.png", data, "image/png")).run()
    assert not at.exception
    captions = " ".join(caption.value for caption in at.caption)
    assert "resized from 128 x 128 to 64 x 64" in captions
    at.checkbox(key="segment_native").check().run()
    captions = " ".join(caption.value for caption in at.caption)
    assert "segmented at its own size, 128 x 128" in captions
