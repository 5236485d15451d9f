"""A trained run as a bioimage.io model package (spec 0.5), for Fiji/deepImageJ, ilastik, BiaPy, QuPath.

:func:`export_run` writes a folder holding:

- ``rdf.yaml``: the model description (bioimage.io spec 0.5), with the training data, the
  preprocessing and the run's validation scores in its description and documentation;
- ``weights.pt``: the PyTorch state dict, with ``unetlab_unet.py`` (the architecture: the U-Net's
  source, made standalone, plus :data:`PACKAGE_CALLABLE`, which returns probabilities);
- TorchScript and ONNX weights, converted by ``bioimageio.core``'s converters from the state dict
  (its ONNX converter exports with ``torch.export``; where that fails, the legacy TorchScript-based
  ``torch.onnx`` exporter is used, and the weights' comment says so);
- ``test_input.npy`` / ``test_output.npy``: one validation image of the run as the network met it
  (the run's image size, native dtype) and the probabilities our own model gives for it;
- ``cover.png`` (image | probability | thresholded mask) and ``README.md`` (the documentation).

The package is then validated by ``bioimageio.core`` exactly as ``bioimageio test`` does (every
weight format reproduces the test output). Nothing is downloaded: the description names no URL,
and the spec's checks run on local files only.

Input contract of the package: (batch, channel, y, x), y and x multiples of ``2**depth`` (the
network's poolings; our own prediction pads other sizes by reflection, a package consumer tiles
to the sizes the description allows). Preprocessing: uint8 / 255, uint16 / 65535, float as is,
the one rule every U-Net Lab loader applies (:func:`core.datasets.io.to_float`).
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import CheckpointError, RunError, UNetLabError
from core.runs import Registry

#: The architecture callable the package's state dict is loaded into (defined in ARCHITECTURE_FILE).
PACKAGE_CALLABLE = "UNetLabProbabilities"
ARCHITECTURE_FILE = "unetlab_unet.py"
INPUT_ID, OUTPUT_ID = "raw", "probability"
#: Largest side of the test input: the validation image is cropped to it (a multiple of 2**depth).
TEST_SIDE = 256
#: The weight formats a package must hold (besides the state dict).
CONVERTED_FORMATS = ("torchscript", "onnx")

_WRAPPER_SOURCE = '''

class UNetLabProbabilities(UNet):
    """The U-Net with a sigmoid: (N, C, H, W) images in [0, 1] -> (N, 1, H, W) foreground probabilities.

    H and W must be multiples of 2**depth (the bioimage.io description says so); written without
    padding or data-dependent branches so TorchScript and ONNX keep every size dynamic.
    """

    def __init__(self, in_channels: int = 1, base_width: int = 32, depth: int = 4, out_channels: int = 1):
        super().__init__(in_channels, base_width, depth, out_channels)
        self.eval()  # an inference package: batch norm uses its stored statistics, whoever loads it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        level = len(skips) - 1
        for block in self.decoder:
            x = block(x, skips[level])
            level -= 1
        return torch.sigmoid(self.head(x))
'''


@dataclass
class ExportResult:
    """What :func:`export_run` wrote and measured.

    folder : the package folder; rdf : its ``rdf.yaml``
    formats : weight formats in the package (``pytorch_state_dict``, ``torchscript``, ``onnx``)
    converted_by : format -> how it was made ("bioimageio.core ..." or the fallback used)
    max_abs_difference : format -> largest |package output - our output| on the test input
    seconds : wall time of the export (conversion and validation included)
    validation : "passed" or the bioimageio.core test summary's status
    """

    folder: Path
    rdf: Path
    formats: list[str]
    converted_by: dict[str, str]
    max_abs_difference: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    validation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "rdf": str(self.rdf), "formats": self.formats,
                "converted_by": self.converted_by, "max_abs_difference": self.max_abs_difference,
                "seconds": self.seconds, "validation": self.validation}


# ---- offline use of bioimageio ---------------------------------------------------------------


def offline_bioimageio() -> None:
    """Settings that keep ``bioimageio.spec`` / ``core`` from reaching the network or a user cache
    they did not ask for: no checks of remote URLs (the packages we write name none) and quiet
    logging. Set before the first ``bioimageio`` import; values a user set are kept."""
    os.environ.setdefault("BIOIMAGEIO_LOG_WARNINGS", "false")
    try:
        from loguru import logger

        # bioimageio logs every step at INFO to stderr; our commands say what happened themselves.
        logger.remove()
        logger.add(lambda message: None, level="ERROR")
    except ImportError:  # pragma: no cover - loguru comes with bioimageio.core
        pass


# ---- the architecture file -------------------------------------------------------------------


def architecture_source() -> str:
    """``core/model.py`` made standalone (its one project import replaced by a local error class),
    plus :data:`PACKAGE_CALLABLE`. Generated from the module's source, so the package's network
    is always the one that was trained."""
    from core import model

    source = inspect.getsource(model)
    project_import = "from core.errors import ModelConfigError\n"
    if project_import not in source:
        raise UNetLabError("core/model.py changed its imports; update core.export.architecture_source")
    local = ("from typing import List\n\n\nclass ModelConfigError(ValueError):\n"
             "    \"\"\"A U-Net hyper-parameter or an input tensor does not fit the network.\"\"\"\n")
    header = "# Generated by U-Net Lab (core/export.py) from core/model.py; the network of the exported run.\n"
    return header + source.replace(project_import, local) + _WRAPPER_SOURCE


# ---- the test pair ---------------------------------------------------------------------------


def multiple_crop(image: np.ndarray, multiple: int, side: int = TEST_SIDE) -> np.ndarray:
    """The top-left crop of an (H, W, C) image whose sides are the largest multiples of ``multiple``
    that fit both the image and ``side`` (an image smaller than ``multiple`` is padded by reflection).

    Returns
    -------
    ndarray, (h, w, C), the image's dtype.
    """
    height, width = image.shape[:2]
    if height < multiple or width < multiple:
        image = np.pad(image, ((0, max(0, multiple - height)), (0, max(0, multiple - width)), (0, 0)),
                       mode="reflect" if min(height, width) > 1 else "edge")
        height, width = image.shape[:2]
    crop_h = max(multiple, min(side, height) // multiple * multiple)
    crop_w = max(multiple, min(side, width) // multiple * multiple)
    return np.ascontiguousarray(image[:crop_h, :crop_w])


def input_scale(dtype: np.dtype) -> float:
    """The gain that maps an image of this dtype to [0, 1] as our loaders do (1 for floats)."""
    if dtype == np.uint8:
        return 1 / 255
    if dtype == np.uint16:
        return 1 / 65535
    return 1.0


def load_architecture(path: Path) -> Any:
    """The module defined by a generated architecture file (imported from that file, as a package
    consumer imports it)."""
    import importlib.util
    import sys

    name = f"unetlab_unet_export_{abs(hash(str(path)))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def package_model(checkpoint: Path, architecture: Path):
    """The exported network (sigmoid output, fp32, CPU, eval) with the checkpoint's weights, built from
    the generated architecture file ``architecture``, so the test output is what the package computes.

    Returns
    -------
    (module, config, in_channels, payload)
    """
    import torch

    from core.checkpoints import build_model_from_checkpoint

    unet, config, payload = build_model_from_checkpoint(checkpoint, "cpu")
    model = getattr(load_architecture(architecture), PACKAGE_CALLABLE)(in_channels=unet.in_channels, base_width=unet.base_width, depth=unet.depth)
    model.load_state_dict(unet.state_dict())
    model.eval()
    with torch.no_grad():
        model.to(torch.float32)
    return model, config, int(unet.in_channels), payload


# ---- the description -------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    try:
        return "n/a" if value is None or np.isnan(value) else f"{float(value):.4f}"
    except TypeError:
        return str(value)


def scores_lines(summary: dict[str, Any] | None) -> list[str]:
    """The run's stored validation scores as Markdown table rows, under their exact metric names."""
    from core.metrics import METRIC_NAMES, metric_name

    if not summary:
        return ["(the run has no stored evaluation)"]
    threshold = summary.get("threshold", 0.5)
    rows = [("pixel_f1", summary["pixel"]["f1"]), ("pixel_precision", summary["pixel"]["precision"]),
            ("pixel_recall", summary["pixel"]["recall"]), ("pixel_iou", summary["pixel"]["iou"]),
            ("roc_auc", summary["curves"]["roc_auc"]), ("average_precision", summary["curves"]["average_precision"])]
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {metric_name(key, threshold)} | {_fmt(value)} |" for key, value in rows]
    for method, scores in summary.get("instances", {}).items():
        for key in ("dsb_map", "paper_map", "ap50"):
            lines.append(f"| {METRIC_NAMES[key]} ({method}) | {_fmt(scores.get(key))} |")
    return lines


def documentation_text(run_id: str, config: Any, training: dict[str, Any], summary: dict[str, Any] | None,
                       in_channels: int, multiple: int, scale: float, dtype: str) -> str:
    """The package's README.md: what the model does, its training data, preprocessing and scores."""
    gain = "none (float images in [0, 1])" if scale == 1 else f"x {scale:.10g} (uint{8 if scale == 1 / 255 else 16} to [0, 1])"
    size = (f"every image resized to {config.image_size} x {config.image_size} pixels (bilinear, anti-aliased)"
            if config.image_size else "native image size")
    lines = [
        f"# U-Net Lab run {run_id}",
        "",
        f"A U-Net (Ronneberger et al., 2015; width {config.base_width}, depth {config.depth}) trained with "
        f"U-Net Lab to segment the {training['positive_class']} class of `{config.dataset}`. "
        "Output: the probability of the positive class per pixel.",
        "",
        "## Input and preprocessing",
        "",
        f"- axes (batch, channel, y, x); {in_channels} channel(s) ({'grey' if in_channels == 1 else 'RGB'}); "
        f"y and x multiples of {multiple} (tile larger images; the package states the allowed sizes)",
        f"- data type {dtype}; preprocessing: cast to float32, then scale {gain}",
        f"- scale: the model was trained at {size}; give images at that scale",
        "",
        "## Postprocessing (as U-Net Lab does it)",
        "",
        f"Threshold the probability at {config.threshold:g}; objects are the connected components of the mask "
        f"({'4' if training['kind'] == 'membrane' else '8'}-connected).",
        "",
        "## Training data",
        "",
        f"- dataset `{config.dataset}`" + (f" (folder `{config.root}`)" if config.root else "") + f": {training['title']}",
        f"- {training['n_train']} training images ({config.train_fraction:.0%} of {training['n_pool']}), "
        f"seed {config.seed}, augmentation `{config.augmentation}`",
        f"- validation: {training['split_description']}",
        f"- {config.epochs} epoch(s) of {config.steps_per_epoch} steps, batch {config.batch_size}, "
        f"patches {config.patch_size}, loss {config.loss}, learning rate {config.learning_rate:g}; "
        f"weights of epoch {training['epoch']}",
        "",
        "## Validation scores (U-Net Lab's stored evaluation)",
        "",
        *scores_lines(summary),
        "",
        "## Where it runs",
        "",
        "bioimage.io model packages run in Fiji (deepImageJ), ilastik (Neural Network Workflow), BiaPy, "
        "QuPath (through its bioimage.io / deepImageJ support), napari and Python (`bioimageio.core`). "
        "The ONNX weights run under onnxruntime; the TorchScript weights need no Python source.",
        "",
    ]
    return "\n".join(lines)


def cover_image(image: np.ndarray, probability: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 RGB (h, 3w, 3): the image, its probability map and the thresholded mask over it."""
    from core.overlays import display_rgb, mask_overlay, probability_image

    shown = display_rgb(image)
    return np.concatenate([shown, probability_image(probability), mask_overlay(shown, probability >= threshold)],
                          axis=1)


def training_facts(run_id: str, registry: Registry) -> tuple[Any, dict[str, Any], np.ndarray]:
    """The run's training data in words and numbers, and its first validation image (native dtype).

    Returns
    -------
    dataset, facts, image
        ``image`` (H, W, C) as the network met it (the run's image size), uint8/uint16/float32.
    """
    from core.datasets import split
    from core.evaluate import evaluation_images

    config = registry.get_run(run_id).config
    dataset, indices, description = evaluation_images(run_id, "val", registry)
    parts = split(dataset, config.train_fraction, config.seed, config.validation_fraction,
                  strategy=config.split_strategy, group_pattern=config.group_pattern)
    facts = {"title": dataset.spec.title, "positive_class": dataset.spec.positive_class, "kind": dataset.spec.kind,
             "n_train": len(parts.train), "n_pool": len(dataset), "split_description": description,
             "validation_images": [dataset.names[i] for i in indices]}
    image = dataset.raw_data().images[indices[0]]
    return dataset, facts, image


def build_description(folder: Path, run_id: str, registry: Registry):
    """Write the package's files (all but the converted weights) into ``folder`` and return the
    bioimage.io ``ModelDescr`` (spec 0.5) describing them.

    Raises
    ------
    RunError
        The run has no ``best.pt``.
    """
    import torch
    from bioimageio.spec.model import v0_5 as spec

    record = registry.get_run(run_id)
    if not record.best_checkpoint.is_file():
        raise RunError(f"run {run_id} has no best.pt (status {record.status}); only a trained run can be exported")
    (folder / ARCHITECTURE_FILE).write_text(architecture_source())
    model, config, in_channels, payload = package_model(record.best_checkpoint, folder / ARCHITECTURE_FILE)
    multiple = 2 ** config.depth
    _, facts, image = training_facts(run_id, registry)
    image = multiple_crop(image, multiple)
    if image.shape[2] != in_channels:
        raise CheckpointError(f"run {run_id}: its validation images have {image.shape[2]} channels but the network "
                              f"expects {in_channels}")
    scale = input_scale(image.dtype)
    data_type = str(image.dtype) if image.dtype in (np.uint8, np.uint16) else "float32"
    raw = image.transpose(2, 0, 1)[None].astype(data_type)  # (1, C, h, w), as the package is given it
    with torch.no_grad():
        output = model(torch.from_numpy(raw.astype(np.float32) * np.float32(scale))).numpy().astype(np.float32)

    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", output)
    torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()},
               folder / "weights.pt")
    from PIL import Image

    float_image = raw[0].transpose(1, 2, 0).astype(np.float32) * np.float32(scale)
    Image.fromarray(cover_image(float_image, output[0, 0], config.threshold)).save(folder / "cover.png")
    summary = registry.get_evaluation(run_id, "val")
    facts["epoch"] = int(payload.get("epoch", 0))
    (folder / "README.md").write_text(documentation_text(run_id, config, facts, summary, in_channels, multiple,
                                                         scale, data_type))

    channel_names = ["grey"] if in_channels == 1 else ["red", "green", "blue"][:in_channels]
    if len(channel_names) != in_channels:
        channel_names = [f"channel{i}" for i in range(in_channels)]
    preprocessing: list[Any] = [spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]
    if scale != 1.0:
        preprocessing.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=scale, offset=0.0)))
    # ``data`` describes the tensor the network receives, after the preprocessing (the test input is
    # given before it, in the image's own dtype).
    data = spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
    space = [spec.SpaceInputAxis(id=spec.AxisId(axis), size=spec.ParameterizedSize(min=multiple, step=multiple))
             for axis in ("y", "x")]
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID),
        description=f"image, {in_channels} channel(s), {data_type}",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in channel_names]), *space],
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
        data=data,
        preprocessing=preprocessing,
    )]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID),
        description=f"probability of the positive class ({facts['positive_class']})",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(facts["positive_class"].replace(" ", "_")
                                                                                 or "foreground")]),
              *[spec.SpaceOutputAxis(id=spec.AxisId(axis), size=spec.SizeReference(
                  tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(axis))) for axis in ("y", "x")]],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )]
    architecture = spec.ArchitectureFromFileDescr(
        source=folder / ARCHITECTURE_FILE, callable=spec.Identifier(PACKAGE_CALLABLE),
        kwargs={"in_channels": in_channels, "base_width": config.base_width, "depth": config.depth})
    weights = spec.WeightsDescr(pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
        source=folder / "weights.pt", architecture=architecture,
        pytorch_version=spec.Version(torch.__version__.split("+")[0])))
    headline = _headline(summary)
    description = (f"U-Net (width {config.base_width}, depth {config.depth}) for the {facts['positive_class']} of "
                   f"{config.dataset}: trained on {facts['n_train']} images ({config.train_fraction:.0%}, seed "
                   f"{config.seed}, augmentation {config.augmentation}); validation {headline}. Exported from "
                   f"U-Net Lab run {run_id}.")
    return spec.ModelDescr(
        name=package_name(config),
        description=description[:1024],
        authors=[spec.Author(name="U-Net Lab")],
        cite=[spec.CiteEntry(text="Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical "
                                  "Image Segmentation. MICCAI 2015", doi=spec.Doi("10.1007/978-3-319-24574-4_28"))],
        license=spec.LicenseId("MIT"),
        documentation=spec.FileDescr(source=folder / "README.md"),
        covers=[spec.FileDescr(source=folder / "cover.png")],
        tags=["unet", "segmentation", "2d", "pytorch", "unetlab", facts["kind"], config.dataset],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        config={"unetlab": {"run_id": run_id, "run_config": config.to_dict(), "training_data": facts,
                            "validation": _plain_json(_headline_values(summary)),
                            "postprocessing": {"threshold": config.threshold,
                                               "objects": "connected components of the thresholded mask"}}},
    )


def package_name(config: Any) -> str:
    """The package's name: only the characters the spec allows (letters, digits, ``_+- ()``)."""
    import re

    text = f"U-Net Lab {config.dataset} {config.train_fraction * 100:g} pct {config.augmentation} seed {config.seed}"
    return re.sub(r"[^A-Za-z0-9_+\- ()]", "-", text)[:128]


def _headline(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "not evaluated"
    dsb = summary.get("instances", {}).get("components", {}).get("dsb_map")
    return (f"pixel F1 {_fmt(summary['pixel']['f1'])}, DSB mAP {_fmt(dsb)} on {summary['n_images']} images"
            if dsb is not None else f"pixel F1 {_fmt(summary['pixel']['f1'])} on {summary['n_images']} images")


def _headline_values(summary: dict[str, Any] | None) -> dict[str, Any]:
    if not summary:
        return {}
    values = {"n_images": summary["n_images"], "pixel_f1": summary["pixel"]["f1"],
              "roc_auc": summary["curves"]["roc_auc"], "average_precision": summary["curves"]["average_precision"]}
    for method, scores in summary.get("instances", {}).items():
        for key in ("dsb_map", "paper_map", "ap50"):
            values[f"{key}[{method}]"] = scores.get(key)
    return values


def _plain_json(values: Any) -> Any:
    """NaN -> None, so the YAML holds plain numbers."""
    return json.loads(json.dumps(values, default=float).replace("NaN", "null"))


# ---- conversion and validation ---------------------------------------------------------------


def convert_weights(descr: Any, folder: Path) -> dict[str, str]:
    """Add TorchScript and ONNX weights to ``descr`` (in place), written into ``folder``.

    bioimageio.core's converters first: TorchScript by scripting (our forward has no
    data-dependent branches, so it scripts; tracing is the fallback), ONNX with ``torch.export``.
    If its ONNX export fails (``torch.export`` cannot prove a dynamic size), the legacy exporter
    with dynamic axes is used. Returns format -> how it was made.
    """
    from bioimageio.core.weight_converters import pytorch_to_onnx, pytorch_to_torchscript

    how: dict[str, str] = {}
    try:
        descr.weights.torchscript = pytorch_to_torchscript.convert(descr, folder / "weights_torchscript.pt",
                                                                   use_tracing=False)
        how["torchscript"] = "bioimageio.core pytorch_to_torchscript (scripted)"
    except Exception as error:  # noqa: BLE001 - a converter may fail in many ways; try the next
        first = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if str(error) else type(error).__name__
        descr.weights.torchscript = pytorch_to_torchscript.convert(descr, folder / "weights_torchscript.pt",
                                                                   use_tracing=True)
        how["torchscript"] = f"bioimageio.core pytorch_to_torchscript (traced; scripting failed: {first})"
    import logging

    # torch.onnx logs one warning per torchvision operator it cannot register (we never install torchvision).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            descr.weights.onnx = pytorch_to_onnx.convert(descr, folder / "weights.onnx")
        how["onnx"] = "bioimageio.core pytorch_to_onnx (torch.export)"
    except Exception as error:  # noqa: BLE001
        for leftover in (folder / "weights.onnx", folder / "weights.onnx.data"):
            leftover.unlink(missing_ok=True)
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
        descr.weights.onnx = legacy_onnx(descr, folder / "weights.onnx", reason)
        how["onnx"] = f"torch.onnx legacy exporter with dynamic axes (bioimageio.core's converter failed: {reason})"
    return how


def legacy_onnx(descr: Any, path: Path, reason: str):
    """ONNX weights from the TorchScript-based ``torch.onnx`` exporter, batch, y and x dynamic."""
    import torch
    from bioimageio.core.backends.pytorch_backend import load_torch_model
    from bioimageio.spec.model import v0_5 as spec

    model = load_torch_model(descr.weights.pytorch_state_dict, load_state=True, devices=["cpu"]).eval()
    example = torch.from_numpy(np.load(descr.inputs[0].test_tensor.source).astype(np.float32))
    dynamic = {0: "batch", 2: "y", 3: "x"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=[INPUT_ID], output_names=[OUTPUT_ID],
                          dynamic_axes={INPUT_ID: dynamic, OUTPUT_ID: dynamic})
    return spec.OnnxWeightsDescr(source=path.absolute(), opset_version=17, parent="pytorch_state_dict",
                                 comment=f"torch.onnx legacy exporter (dynamo=False); bioimageio.core's "
                                         f"converter failed: {reason[:300]}")


def test_package(rdf: Path) -> tuple[bool, str]:
    """Run ``bioimageio.core``'s test of a package (what ``bioimageio test`` runs): the description
    validates and every weight format reproduces the test output. Returns (passed, details)."""
    offline_bioimageio()
    from bioimageio.core import test_description

    summary = test_description(str(rdf))
    if summary.status == "passed":
        return True, "passed"
    failed = [f"{detail.name}: {'; '.join(str(e.msg) for e in detail.errors)[:300]}"
              for detail in summary.details if detail.status == "failed"]
    return False, f"{summary.status}: " + (" | ".join(failed) or summary.format()[:800])


def export_run(run_id: str, out: str | Path, registry: Registry | None = None, validate: bool = True) -> ExportResult:
    """Write run ``run_id`` as a bioimage.io model package into folder ``out`` (see the module docstring).

    Parameters
    ----------
    run_id : a trained run (it needs ``best.pt``; its stored evaluation goes into the description)
    out : the package folder (created; must be empty or absent)
    validate : test the package with bioimageio.core (as ``bioimageio test`` does)

    Raises
    ------
    RunError, CheckpointError
        The run is unknown or has no ``best.pt``.
    UNetLabError
        ``out`` is a non-empty folder or a file; a weight conversion failed; the package did
        not pass bioimageio.core's test (the message names the failing check).
    """
    started = time.perf_counter()
    offline_bioimageio()
    from bioimageio.spec import save_bioimageio_package_as_folder

    registry = registry or Registry()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UNetLabError(f"--out {out} exists and is not an empty folder; give a new folder for the package")
    with tempfile.TemporaryDirectory(prefix="unetlab-export-") as temporary:
        work = Path(temporary)
        descr = build_description(work, run_id, registry)
        try:
            converted_by = convert_weights(descr, work)
        except Exception as error:  # noqa: BLE001 - report the converter's failure as one line
            raise UNetLabError(f"run {run_id}: converting the weights failed ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:300] if str(error) else ''})") from None
        out.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package_as_folder(descr, output_path=out)
    rdf = out / "rdf.yaml"
    if not rdf.is_file():
        candidates = sorted(out.glob("*.yaml"))
        rdf = candidates[0] if candidates else rdf
    result = ExportResult(folder=out, rdf=rdf, formats=["pytorch_state_dict", *CONVERTED_FORMATS],
                          converted_by=converted_by)
    result.max_abs_difference = compare_formats(out)
    if validate:
        passed, details = test_package(rdf)
        result.validation = details
        if not passed:
            raise UNetLabError(f"the package {rdf} did not pass bioimageio.core's test: {details}")
    result.seconds = time.perf_counter() - started
    return result


def compare_formats(folder: Path) -> dict[str, float]:
    """Largest absolute difference between each converted format's output and the test output
    (our model's), on the package's test input: ONNX under onnxruntime, TorchScript under torch."""
    import onnxruntime
    import torch

    raw = np.load(folder / "test_input.npy")
    expected = np.load(folder / "test_output.npy")
    gain = input_scale(raw.dtype)
    inputs = raw.astype(np.float32) * np.float32(gain)
    onnx_path = next(iter(sorted(folder.glob("*.onnx"))))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_output = session.run(None, {session.get_inputs()[0].name: inputs})[0]
    scripted = torch.jit.load(str(next(iter(sorted(folder.glob("*torchscript*.pt"))))), map_location="cpu")
    if scripted.training:
        raise UNetLabError(f"the TorchScript weights in {folder} were saved in training mode")
    with torch.no_grad():
        script_output = scripted(torch.from_numpy(inputs)).numpy()
    return {"onnx": float(np.abs(onnx_output - expected).max()),
            "torchscript": float(np.abs(script_output - expected).max())}


def zip_folder(folder: str | Path) -> bytes:
    """A package folder as the bytes of a ``.zip`` holding its files at the top level (the form
    deepImageJ, ilastik and bioimage.io uploads take)."""
    import io
    import zipfile

    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, str(path.relative_to(folder)))
    return buffer.getvalue()


def package_zip(run_id: str, registry: Registry | None = None, validate: bool = True) -> tuple[bytes, ExportResult]:
    """Export run ``run_id`` into a temporary folder and return the package as ``.zip`` bytes with
    the :class:`ExportResult` (a page's download button: ``st.download_button(data=...)``)."""
    with tempfile.TemporaryDirectory(prefix="unetlab-package-") as temporary:
        result = export_run(run_id, Path(temporary) / "package", registry=registry, validate=validate)
        return zip_folder(result.folder), result
