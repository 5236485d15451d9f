"""bioimage.io export of a trained run: the package passes bioimageio.core's test, and its ONNX and
TorchScript weights give our outputs; the package comes back in as an external model on the run's split."""

from __future__ import annotations

import dataclasses
import json
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
            batch_size=2, patch_size=64, depth=3, base_width=8, threads=1)


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
