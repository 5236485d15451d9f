"""bioimage.io export of a trained run: the package passes bioimageio.core's test, and its ONNX and
TorchScript weights give our outputs; the package comes back in as an external model on the run's split."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (pip install -e .)")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .)")

import torch  # noqa: E402

from core.config import RunConfig  # noqa: E402
from core.paths import PROJECT_ROOT  # noqa: E402
from core.runs import Registry  # noqa: E402

TINY = dict(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="none", epochs=1, steps_per_epoch=2,
            batch_size=2, patch_size=64, depth=3, base_width=8, threads=1,
            precision="fp32")  # fp32 everywhere: our stored scores and the package's are then comparable


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained and evaluated run and its package (exported without the built-in test: the
    test below runs bioimageio.core's check itself), in a registry of their own."""
    from core.export import export_run
    from core.lifecycle import train_then_evaluate

    base = tmp_path_factory.mktemp("bioimageio")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNETLAB_CACHE", str(base / "cache"))
    mp.setenv("UNETLAB_CHECKPOINTS", str(base / "checkpoints"))
    registry = Registry(base / "cache" / "registry.sqlite")
    outcome = train_then_evaluate(RunConfig(**TINY), registry=registry, show_progress=False)
    result = export_run(outcome.result.run_id, base / "package", registry=registry, validate=False)
    yield registry, outcome.result.run_id, result, base
    mp.undo()


def our_probability(registry: Registry, run_id: str, image: np.ndarray) -> np.ndarray:
    """Our own prediction of a float (H, W, C) image, in fp32 at its own size."""
    from core.inference import load_model, predict_image

    loaded = load_model(registry.get_run(run_id).best_checkpoint, device="cpu")
    loaded = dataclasses.replace(loaded, precision="fp32")
    return predict_image(loaded, image, scale="native").probability


def test_the_package_passes_bioimageio_test(exported):
    from bioimageio.core import test_description

    from core.export import offline_bioimageio

    _, run_id, result, _ = exported
    offline_bioimageio()
    summary = test_description(str(result.rdf))  # what `bioimageio test rdf.yaml` runs
    assert summary.status == "passed", summary.format()[:2000]
    text = result.rdf.read_text()
    assert "format_version: 0.5" in text
    for weights in ("pytorch_state_dict:", "torchscript:", "onnx:"):
        assert weights in text
    assert "scale_linear" in text and "0.00392156862745098" in text  # uint8 / 255, as our loaders read it
    assert run_id in text and "synthetic-nuclei" in text
    readme = (result.folder / "README.md").read_text()
    assert "Training data" in readme and "12 training images (50% of 24)" in readme
    assert "Pixel F1 (Dice) at threshold 0.5" in readme and "DSB mAP" in readme
    from PIL import Image

    with Image.open(result.folder / "cover.png") as cover:
        assert cover.size[0] == 3 * cover.size[1]  # image | probability | mask


def test_onnx_and_torchscript_give_our_outputs(exported):
    registry, run_id, result, _ = exported
    raw = np.load(result.folder / "test_input.npy")
    assert raw.dtype == np.uint8 and raw.shape[:2] == (1, 1) and raw.shape[2] % 8 == 0
    session = onnxruntime.InferenceSession(str(result.folder / "weights.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(next(result.folder.glob("*torchscript*.pt"))), map_location="cpu")
    full = raw[0].transpose(1, 2, 0).astype(np.float32) / 255
    # The test image and a smaller, non-square crop: sizes stay dynamic in both formats.
    for image in (full, full[:128, :192]):
        ours = our_probability(registry, run_id, image)
        batch = image.transpose(2, 0, 1)[None].copy()
        onnx_output = session.run(None, {session.get_inputs()[0].name: batch})[0][0, 0]
        with torch.no_grad():
            script_output = scripted(torch.from_numpy(batch)).numpy()[0, 0]
        assert onnx_output.shape == ours.shape == image.shape[:2]
        assert np.abs(onnx_output - ours).max() < 1e-4
        assert np.abs(script_output - ours).max() < 1e-4
    assert set(result.max_abs_difference) == {"onnx", "torchscript"}
    assert max(result.max_abs_difference.values()) < 1e-4
    assert "bioimageio.core" in result.converted_by["torchscript"]


def test_the_package_zips_for_a_download(exported):
    import io
    import zipfile

    from core.export import zip_folder

    _, _, result, _ = exported
    with zipfile.ZipFile(io.BytesIO(zip_folder(result.folder))) as archive:
        names = set(archive.namelist())
        assert {"rdf.yaml", "weights.pt", "weights.onnx", "test_input.npy", "cover.png"} <= names
        assert archive.read("rdf.yaml") == result.rdf.read_bytes()


def test_export_refuses_a_used_folder_and_an_unknown_run(exported, tmp_path):
    _, run_id, result, base = exported
    env = {"UNETLAB_CACHE": str(base / "cache"), "UNETLAB_CHECKPOINTS": str(base / "checkpoints")}
    import os

    for arguments, expected in (
        (["--run", run_id, "--out", str(result.folder)], "not an empty folder"),
        (["--run", "no-such-run", "--out", str(tmp_path / "new")], "no run with id"),
    ):
        process = subprocess.run([sys.executable, "-m", "core", "export", *arguments], cwd=PROJECT_ROOT,
                                 capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        assert process.returncode == 2, process.stderr
        assert expected in process.stderr and len(process.stderr.strip().splitlines()) == 1


# ---- the package back in, as an external model ---------------------------------------------------


def assert_same_scores(ours: dict, theirs: dict) -> None:
    """Two evaluations of the same network on the same images agree (fp32 kernels differ in the last bits)."""
    assert theirs["image_names"] == ours["image_names"] and theirs["split_description"] == ours["split_description"]
    total = sum(ours["pixel"][key] for key in ("tp", "fp", "fn", "tn"))
    assert sum(theirs["pixel"][key] for key in ("tp", "fp", "fn", "tn")) == total
    assert abs(theirs["pixel"]["tp"] - ours["pixel"]["tp"]) <= 1e-4 * total
    assert theirs["pixel"]["f1"] == pytest.approx(ours["pixel"]["f1"], abs=1e-3)
    assert theirs["curves"]["roc_auc"] == pytest.approx(ours["curves"]["roc_auc"], abs=2e-3)
    for method, scores in ours["instances"].items():
        assert theirs["instances"][method]["dsb_map"] == pytest.approx(scores["dsb_map"], abs=0.02)
        assert abs(theirs["instances"][method]["n_predicted"] - scores["n_predicted"]) <= 2


@pytest.mark.parametrize("form", ["package", "onnx"])
def test_an_exported_model_scores_as_our_run_on_its_split(exported, form):
    from core.errors import RunError
    from core.evaluate import evaluate_run
    from core.external import evaluate_external, load_external_model
    from core.runs import is_external
    from core.tables import runs_table

    registry, run_id, result, _ = exported
    path = result.rdf if form == "package" else result.folder / "weights.onnx"
    model = load_external_model(path, name=f"exported {form}")
    external_id, summary = evaluate_external(model, "synthetic-nuclei", "val", seed=0, registry=registry,
                                             show_progress=False)
    record = registry.get_run(external_id)
    assert record.status == "finished" and is_external(record.config)
    assert record.config.extra["method"] == f"external: exported {form}"
    ours = registry.get_evaluation(run_id, "val")
    assert_same_scores(ours, registry.get_evaluation(external_id, "val"))
    assert summary["external_model"]["format"] == ("bioimage.io" if form == "package" else "onnx")

    # Shown as runs are, with the same named metric columns; the registry check does not ask for checkpoints.
    table = runs_table([registry.get_run(run_id), record], {run_id: ours, external_id: summary}).set_index("Run")
    column = "Pixel F1 (Dice) at threshold 0.5"
    assert table.loc[external_id, column] == pytest.approx(table.loc[run_id, column], abs=1e-3)
    assert Registry.check(registry.path).ok
    with pytest.raises(RunError, match="external model"):
        evaluate_run(external_id, registry=registry, show_progress=False)


def test_evaluate_model_command_lists_an_external_run(exported):
    import os

    _, _, result, base = exported
    env = {**os.environ, "UNETLAB_CACHE": str(base / "cache"), "UNETLAB_CHECKPOINTS": str(base / "checkpoints")}
    process = subprocess.run([sys.executable, "-m", "core", "evaluate-model", "--model", str(result.folder / "weights.onnx"),
                              "--dataset", "synthetic-nuclei", "--split", "val", "--name", "cli-onnx", "--json"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert process.returncode == 0, process.stderr[-1000:]
    line = json.loads(process.stdout.strip().splitlines()[-1])
    assert line["method"] == "external: cli-onnx" and 0 <= line["headline"]["pixel_f1"] <= 1
    listed = subprocess.run([sys.executable, "-m", "core", "runs", "list", "--json"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    assert line["run_id"] in listed.stdout and "external: cli-onnx" in listed.stdout
    # A model file that is not a model: one line, exit 2.
    bad = base / "not-a-model.onnx"
    bad.write_bytes(b"not onnx")
    process = subprocess.run([sys.executable, "-m", "core", "evaluate-model", "--model", str(bad),
                              "--dataset", "synthetic-nuclei"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=120, env=env)
    assert process.returncode == 2 and "not a readable ONNX model" in process.stderr


def test_outputs_are_read_as_probabilities_or_labels():
    from core.external import ExternalModelError, padded_size, pick_channel, to_probability

    logits = np.array([[[-3.0, 3.0]], [[3.0, -3.0]]], np.float32)  # (K=2, 1, 2)
    with pytest.raises(ExternalModelError, match="output-channel"):
        pick_channel(logits, None, "none", "m")
    foreground = pick_channel(logits, None, "softmax", "m")  # background, foreground as nnU-Net orders them
    assert foreground[0, 0] > 0.99 and foreground[0, 1] < 0.01
    with pytest.raises(ExternalModelError, match="--activation sigmoid"):
        to_probability(logits[0], "none", "m")
    probability, labels = to_probability(np.array([[0, 2], [2, 5]], np.uint16), "none", "m")
    assert labels.tolist() == [[0, 2], [2, 5]] and probability.tolist() == [[0, 1], [1, 1]]
    assert padded_size(250, 8, 8) == 256 and padded_size(5, 8, 8) == 8 and padded_size(256, 16, 16) == 256


def test_another_tools_label_images_come_in_as_an_external_run(tmp_path):
    """Cellpose-style output for the exported split images: scored and stored like a model; truth as
    'prediction' scores 1 everywhere, and a missing file is named, with no run left behind."""
    from PIL import Image

    from core.evaluate import split_images
    from core.external import ExternalModelError, evaluate_external, load_external_model, write_split_images

    written = write_split_images(tmp_path / "images", "synthetic-nuclei", "val", seed=1)
    listing = json.loads((tmp_path / "images" / "images.json").read_text())
    assert [path.stem for path in written] == listing["images"] and listing["seed"] == 1
    data, indices, _ = split_images(RunConfig(dataset="synthetic-nuclei", seed=1), "val")
    (tmp_path / "labels").mkdir()
    for index in indices:
        Image.fromarray(data[index].instances.astype(np.uint16)).save(tmp_path / "labels" / f"{data.names[index]}_cp_masks.png")
    registry = Registry()
    run_id, summary = evaluate_external(load_external_model(tmp_path / "labels", name="cellpose"), "synthetic-nuclei",
                                        seed=1, registry=registry, show_progress=False)
    assert summary["n_images"] == len(written) and summary["pixel"]["f1"] == 1.0
    assert all(scores["dsb_map"] == 1.0 for scores in summary["instances"].values())
    assert "method_parameters" not in summary  # its objects are the tool's, not post-processed here
    assert registry.get_run(run_id).config.extra["method"] == "external: cellpose"
    (tmp_path / "labels" / f"{data.names[indices[-1]]}_cp_masks.png").unlink()
    with pytest.raises(ExternalModelError, match=f"no labels for image {re.escape(data.names[indices[-1]])}"):
        evaluate_external(load_external_model(tmp_path / "labels"), "synthetic-nuclei", seed=1, registry=registry,
                          show_progress=False)
    assert len(registry.list_runs()) == 1
