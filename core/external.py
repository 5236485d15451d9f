"""Other tools' models on our splits: a bioimage.io package or an ONNX file scored as a run.

:func:`evaluate_external` runs a 2D model on exactly the images a run with the same dataset, seed
and split settings is validated on (:func:`core.evaluate.split_images`), scores it with every
metric of :func:`core.evaluate.score_images`, and stores the result as a finished run whose
``extra["method"]`` is ``"external: NAME"`` (:data:`core.runs.EXTERNAL_PREFIX`): the runs table,
the Compare page, curves, masks and reports read it as they read our runs' evaluations.

How a model meets an image:

- a **bioimage.io package** (``rdf.yaml`` / ``bioimageio.yaml``, a folder or a ``.zip``) gets the
  image in its native dtype (uint8, uint16 or float) and applies its own preprocessing, through
  ``bioimageio.core``'s prediction pipeline; images are padded (reflect) to the nearest size the
  package allows and the output cropped back;
- an **ONNX file** gets (1, C, H, W) float32 in [0, 1] (uint8 / 255, uint16 / 65535: our loaders'
  rule), padded to a multiple of ``size_multiple``; it must have dynamic height and width.

The output is one channel (``output_channel``) of the first output: a probability map in [0, 1]
(after ``activation``, for a model that outputs logits), or an integer label image, whose labels
are then the objects scored under every post-processing method name and whose ``labels > 0`` is
the mask.

A **folder of label images** (what Cellpose, StarDist, nnU-Net or Fiji wrote for the images
:func:`write_split_images` exported) is a "model" too: each image's labels are looked up by its
name (``NAME.png``/``.tif``, also ``NAME_cp_masks``, ``NAME_masks``, ``NAME_labels``), so another
tool's results are stored as an external run exactly like a model run here. A label image with
only two values is a mask: its objects are its connected components, by the dataset's rule.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.config import RunConfig
from core.errors import UNetLabError
from core.runs import EXTERNAL_PREFIX, Registry, check_config

ACTIVATIONS = ("none", "sigmoid", "softmax")
#: The image formats of a bioimage.io description file.
DESCRIPTION_NAMES = ("rdf.yaml", "bioimageio.yaml")


class ExternalModelError(UNetLabError, ValueError):
    """A model file that cannot be run on our images (not 2D, no usable output, ...)."""


@dataclass
class ExternalModel:
    """A loaded model that maps one image to a probability map (and maybe its own labels).

    name : how the run names it ("external: NAME")
    source : the file or folder it was loaded from
    kind : "bioimage.io" or "onnx"
    details : what was used (weight format, output, channel), stored with the evaluation
    predict : (native (H, W, C) image, its name) -> (probability float32 (H, W) in [0, 1], labels int (H, W) or None)
    """

    name: str
    source: str
    kind: str
    details: dict[str, Any]
    predict: Callable[[np.ndarray, str], tuple[np.ndarray, np.ndarray | None]]
    close: Callable[[], None] = field(default=lambda: None)


# ---- outputs -------------------------------------------------------------------------------------


def to_probability(output: np.ndarray, activation: str, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One output channel (H, W) -> (probability float32 in [0, 1], labels or None).

    Integer outputs are label images (their ``> 0`` is the mask, their ids the objects). Float
    outputs go through ``activation`` (``sigmoid`` for logits; ``softmax`` is applied by the caller
    across channels) and must then lie in [0, 1].

    Raises
    ------
    ExternalModelError
        A float output outside [0, 1] (or NaN) after the activation, naming the option to use.
    """
    if np.issubdtype(output.dtype, np.integer) or output.dtype == bool:
        labels = output.astype(np.int64)
        if labels.min(initial=0) < 0:
            raise ExternalModelError(f"{source}: its label output holds negative ids")
        return (labels > 0).astype(np.float32), labels.astype(np.int32)
    probability = output.astype(np.float32)
    if activation == "sigmoid":
        probability = 1 / (1 + np.exp(-probability))
    if not np.isfinite(probability).all() or probability.min() < 0 or probability.max() > 1:
        raise ExternalModelError(
            f"{source}: its output lies in [{np.nanmin(probability):.3g}, {np.nanmax(probability):.3g}], not in "
            "[0, 1]; if it gives logits use --activation sigmoid (one channel) or softmax (one per class)")
    return probability.astype(np.float32, copy=False), None


def pick_channel(output: np.ndarray, channel: int | None, activation: str, source: str) -> np.ndarray:
    """(K, H, W) -> (H, W): softmax across K first if asked, then channel ``channel`` (default: the
    only one, or 1 of 2 after a softmax: background then foreground, as nnU-Net orders them)."""
    if activation == "softmax":
        shifted = np.exp(output - output.max(axis=0, keepdims=True))
        output = shifted / shifted.sum(axis=0, keepdims=True)
    count = output.shape[0]
    if channel is None:
        if count == 1:
            channel = 0
        elif count == 2 and activation == "softmax":
            channel = 1
        else:
            raise ExternalModelError(f"{source}: its output has {count} channels; choose one with --output-channel")
    if not 0 <= channel < count:
        raise ExternalModelError(f"{source}: --output-channel {channel} does not exist (channels 0..{count - 1})")
    return output[channel]


def padded_size(size: int, minimum: int, step: int) -> int:
    """The smallest ``minimum + k * step`` (k >= 0) at least ``size``; ``step`` 0 means ``minimum`` only."""
    if size <= minimum or step <= 0:
        return minimum if step <= 0 else max(minimum, size)
    return minimum + -(-(size - minimum) // step) * step


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) padded at the bottom and right to (height, width) by reflection (edge for tiny images)."""
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return image
    mode = "reflect" if pad_h < image.shape[0] and pad_w < image.shape[1] else "edge"
    return np.pad(image, ((0, max(0, pad_h)), (0, max(0, pad_w)), (0, 0)), mode=mode)


def as_channels(image: np.ndarray, channels: int, source: str) -> np.ndarray:
    """(H, W, C) adapted to a model's channel count: grey repeated to RGB, RGB averaged to grey."""
    from core.predict import match_channels

    if image.shape[2] == channels:
        return image
    adapted = match_channels(image.astype(np.float32), channels, source)
    return adapted.astype(image.dtype) if np.issubdtype(image.dtype, np.integer) else adapted


# ---- bioimage.io packages ------------------------------------------------------------------------


def find_description(path: Path) -> Path:
    """The description file of a package given as its folder, its ``rdf.yaml`` or a ``.zip``."""
    if path.is_dir():
        for name in DESCRIPTION_NAMES:
            if (path / name).is_file():
                return path / name
        raise ExternalModelError(f"{path}: a folder without rdf.yaml or bioimageio.yaml; give a bioimage.io "
                                 "package or an .onnx file")
    return path


def load_bioimageio(path: Path, name: str | None, weights: str | None, output_channel: int | None,
                    activation: str) -> ExternalModel:
    """A 2D bioimage.io model package as an :class:`ExternalModel` (see the module docstring).

    Raises
    ------
    ExternalModelError
        The description is invalid, the model is not 2D with one image input, or its weights
        cannot be run here.
    """
    from core.export import offline_bioimageio

    offline_bioimageio()
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.spec import InvalidDescr
    from bioimageio.spec.model import v0_5

    source = str(path)
    descr = load_description(str(find_description(path)), perform_io_checks=False)
    if isinstance(descr, InvalidDescr) or getattr(descr, "type", None) != "model":
        raise ExternalModelError(f"{path}: not a valid bioimage.io model description")
    if not isinstance(descr, v0_5.ModelDescr):
        raise ExternalModelError(f"{path}: a model of format {descr.format_version}; this reads spec 0.5 packages "
                                 "(update it with `bioimageio update-format`)")
    if len(descr.inputs) != 1:
        raise ExternalModelError(f"{path}: the model takes {len(descr.inputs)} inputs; one image input is needed")
    input_descr, output_descr = descr.inputs[0], descr.outputs[0]
    axis_types = [axis.type for axis in input_descr.axes]
    space = [str(axis.id) for axis in input_descr.axes if axis.type == "space"]
    if sorted(space) != ["x", "y"] or "time" in axis_types or "index" in axis_types:
        raise ExternalModelError(f"{path}: its input axes are {[str(a.id) for a in input_descr.axes]}; a 2D model "
                                 "(y, x, optionally batch and channel) is needed")
    channel_axis = next((axis for axis in input_descr.axes if axis.type == "channel"), None)
    channels = len(channel_axis.channel_names) if channel_axis is not None else 1
    sizes = {str(axis.id): axis.size for axis in input_descr.axes if axis.type == "space"}
    try:
        pipeline = create_prediction_pipeline(descr, weights_format=weights, devices=["cpu"])
    except Exception as error:  # noqa: BLE001 - a package's weights can fail to load in many ways
        raise ExternalModelError(f"{path}: its weights cannot be run here ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200] if str(error) else ''})") from None
    pipeline.load()
    adapter = type(getattr(pipeline, "_adapter", None)).__name__
    used = weights or adapter.replace("ModelAdapter", "").lower() or "default"

    def allowed(axis: str, size: int) -> int:
        spec_size = sizes[axis]
        if isinstance(spec_size, int):
            return spec_size
        if isinstance(spec_size, v0_5.ParameterizedSize):
            return padded_size(size, spec_size.min, spec_size.step)
        return size  # a size that refers to another tensor: the image's own

    def predict(image: np.ndarray, _name: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        import xarray

        from bioimageio.core.digest_spec import create_sample_for_model

        height, width = image.shape[:2]
        target_h, target_w = allowed("y", height), allowed("x", width)
        if target_h < height or target_w < width:
            raise ExternalModelError(f"{path}: the model takes fixed {target_h} x {target_w} inputs, smaller than "
                                     f"the {height} x {width} images")
        padded = pad_image(as_channels(image, channels, source), target_h, target_w)
        # Named axes: bioimageio.core puts them in the model's order (a model without a batch or
        # channel axis gets the singleton squeezed).
        array = xarray.DataArray(np.ascontiguousarray(padded.transpose(2, 0, 1)[None]),
                                 dims=("batch", "channel", "y", "x"))
        sample = create_sample_for_model(descr, inputs={str(input_descr.id): array}, extra_dims="squeeze",
                                         sample_id="image")
        tensor = pipeline.predict_sample_without_blocking(sample).members[output_descr.id]
        dims = [str(d) for d in tensor.dims]
        data = np.asarray(tensor.data)
        if "batch" in dims:
            data = data.take(0, axis=dims.index("batch"))
            dims.remove("batch")
        if "channel" not in dims:
            data, dims = data[None], ["channel", *dims]
        if sorted(dims) != ["channel", "x", "y"]:
            raise ExternalModelError(f"{path}: its output {output_descr.id} has axes {dims}; (channel,) y, x needed")
        data = data.transpose([dims.index("channel"), dims.index("y"), dims.index("x")])[:, :height, :width]
        return to_probability(pick_channel(data, output_channel, activation, source), activation, source)

    details = {"format": "bioimage.io", "weights": str(used or "default"), "input": str(input_descr.id),
               "output": str(output_descr.id), "output_channel": output_channel, "activation": activation,
               "model_name": descr.name}
    return ExternalModel(name=name or descr.name, source=source, kind="bioimage.io", details=details,
                         predict=predict, close=pipeline.unload)


# ---- ONNX files ----------------------------------------------------------------------------------


def load_onnx(path: Path, name: str | None, output_channel: int | None, activation: str,
              size_multiple: int = 32) -> ExternalModel:
    """An ONNX model (N, C, H, W) -> (N, K, H, W) as an :class:`ExternalModel` (see the module docstring).

    Raises
    ------
    ExternalModelError
        Not an ONNX model, or one whose input is not (N, C, H, W) with dynamic H and W.
    """
    import onnxruntime

    from core.datasets.io import to_float

    source = str(path)
    try:
        session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own error types
        raise ExternalModelError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0][:200]})") from None
    inputs = session.get_inputs()
    shape = inputs[0].shape
    if len(inputs) != 1 or len(shape) != 4:
        raise ExternalModelError(f"{path}: the model takes {len(inputs)} input(s) of shape {shape}; one (N, C, H, W) "
                                 "image input is needed")
    channels = shape[1] if isinstance(shape[1], int) else 1
    if isinstance(shape[2], int) or isinstance(shape[3], int):
        raise ExternalModelError(f"{path}: its input has a fixed size {shape[2]} x {shape[3]}; export it with "
                                 "dynamic height and width")

    def predict(image: np.ndarray, _name: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        height, width = image.shape[:2]
        floats = as_channels(to_float(image), channels, source)
        padded = pad_image(floats, -(-height // size_multiple) * size_multiple, -(-width // size_multiple) * size_multiple)
        batch = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        output = session.run(None, {inputs[0].name: batch})[0]
        if output.ndim != 4:
            raise ExternalModelError(f"{path}: its output has shape {output.shape}; (N, K, H, W) is needed")
        data = output[0, :, :height, :width]
        return to_probability(pick_channel(data, output_channel, activation, source), activation, source)

    details = {"format": "onnx", "input": inputs[0].name, "output": session.get_outputs()[0].name,
               "output_channel": output_channel, "activation": activation, "size_multiple": size_multiple,
               "preprocessing": "uint8 / 255, uint16 / 65535, floats as they are"}
    return ExternalModel(name=name or path.stem, source=source, kind="onnx", details=details, predict=predict)


#: Suffixes other tools add to an image's name for its labels (Cellpose, common conventions).
LABEL_SUFFIXES = ("_cp_masks", "_masks", "_labels", "_label", "_mask", "_pred", "_0000")


def label_files(folder: Path) -> dict[str, Path]:
    """Image name -> label file of a folder of label images, the suffixes of :data:`LABEL_SUFFIXES`
    removed (``a_cp_masks.png`` stands for image ``a``); a name given twice is refused."""
    from core.datasets.folder import image_files
    from core.datasets.ome import strip_suffix

    found: dict[str, Path] = {}
    for path in image_files(folder):
        stem = strip_suffix(path.name)
        for suffix in LABEL_SUFFIXES:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem in found:
            raise ExternalModelError(f"{folder}: {found[stem].name} and {path.name} both hold the labels of {stem}")
        found[stem] = path
    return found


def load_labels_folder(path: Path, name: str | None) -> ExternalModel:
    """Another tool's label images (one per image, by name) as an :class:`ExternalModel`.

    Raises
    ------
    ExternalModelError
        The folder holds no label images; later, an image whose labels are missing (named).
    """
    from core.datasets.io import read_label_image

    files = label_files(path)
    if not files:
        raise ExternalModelError(f"{path}: no label images (PNG or TIFF) in the folder")

    def predict(image: np.ndarray, image_name: str = "") -> tuple[np.ndarray, np.ndarray | None]:
        if image_name not in files:
            raise ExternalModelError(f"{path}: no labels for image {image_name} (expected {image_name}.png/.tif, "
                                     f"or with a suffix such as _cp_masks); `evaluate-model --write-images` lists them")
        labels = read_label_image(files[image_name])
        if labels.shape != image.shape[:2]:
            raise ExternalModelError(f"{files[image_name]}: labels are {labels.shape[0]}x{labels.shape[1]} but image "
                                     f"{image_name} is {image.shape[0]}x{image.shape[1]}")
        return (labels > 0).astype(np.float32), labels.astype(np.int64)

    details = {"format": "label images", "files": len(files)}
    return ExternalModel(name=name or path.name, source=str(path), kind="labels", details=details, predict=predict)


def write_split_images(folder: str | Path, dataset: str, split: str = "val", *, root: str | None = None,
                       image_size: int | None = None, seed: int = 0, validation_fraction: float = 0.2,
                       split_strategy: str = "auto", group_pattern: str | None = None) -> list[Path]:
    """Write the images a run with these split settings is evaluated on as ``NAME.tif`` (native dtype,
    (H, W) grey or (H, W, 3) colour) into ``folder``, with ``images.json`` saying which split they
    are: the input for another tool, whose label images :func:`load_labels_folder` reads back."""
    import json

    import tifffile

    from core.evaluate import split_images

    config = RunConfig(dataset=dataset, root=root, image_size=image_size, seed=seed,
                       validation_fraction=validation_fraction, split_strategy=split_strategy,
                       group_pattern=group_pattern)
    check_config(config)
    data, indices, description = split_images(config, split)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = data.raw_data().images
    written = []
    for index in indices:
        image = images[index]
        path = folder / f"{data.names[index]}.tif"
        tifffile.imwrite(path, image[:, :, 0] if image.shape[2] == 1 else image,
                         photometric="minisblack" if image.shape[2] == 1 else "rgb")
        written.append(path)
    (folder / "images.json").write_text(json.dumps({"dataset": dataset, "split": split, "seed": seed,
                                                    "description": description,
                                                    "images": [data.names[i] for i in indices]}, indent=1))
    return written


def load_external_model(path: str | Path, name: str | None = None, weights: str | None = None,
                        output_channel: int | None = None, activation: str = "none") -> ExternalModel:
    """A bioimage.io package (folder, ``rdf.yaml``/``bioimageio.yaml`` or ``.zip``), an ``.onnx`` file, or a
    folder of another tool's label images.

    Raises
    ------
    ExternalModelError
        The path is missing or of another kind, or the model cannot be run on 2D images.
    """
    path = Path(path)
    if activation not in ACTIVATIONS:
        raise ExternalModelError(f"--activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
    if not path.exists():
        raise ExternalModelError(f"--model {path}: no such file or folder")
    if path.suffix.lower() == ".onnx":
        return load_onnx(path, name, output_channel, activation)
    if path.is_dir() and not any((path / file).is_file() for file in DESCRIPTION_NAMES):
        return load_labels_folder(path, name)
    if path.is_dir() or path.suffix.lower() in (".yaml", ".yml", ".zip"):
        return load_bioimageio(path, name, weights, output_channel, activation)
    raise ExternalModelError(f"--model {path}: give a bioimage.io package (its folder, rdf.yaml or .zip) or an "
                             ".onnx file")


# ---- scoring it as a run -------------------------------------------------------------------------


def external_config(dataset: str, name: str, model: ExternalModel, *, root: str | None = None,
                    image_size: int | None = None, seed: int = 0, validation_fraction: float = 0.2,
                    split_strategy: str = "auto", group_pattern: str | None = None) -> RunConfig:
    """The run settings an external model is stored under: the split settings that choose the images
    (dataset, root, size, seed, validation part); nothing was trained (augmentation none, 1 epoch)."""
    method = f"{EXTERNAL_PREFIX}{name}"
    config = RunConfig(dataset=dataset, root=root, image_size=image_size, seed=seed,
                       validation_fraction=validation_fraction, split_strategy=split_strategy,
                       group_pattern=group_pattern, augmentation="none", epochs=1, steps_per_epoch=1,
                       device="cpu", notes=method,
                       extra={"method": method, "external_model": model.source, "external_format": model.kind})
    return check_config(config)


def evaluate_external(model: ExternalModel, dataset: str, split: str = "val", *, root: str | None = None,
                      image_size: int | None = None, seed: int = 0, validation_fraction: float = 0.2,
                      split_strategy: str = "auto", group_pattern: str | None = None, threshold: float = 0.5,
                      registry: Registry | None = None, show_progress: bool = True,
                      n_stored_maps: int = 4) -> tuple[str, dict[str, Any]]:
    """Score ``model`` on the images a run with these split settings is evaluated on, and store it as
    a finished run of method ``external: NAME``. Returns (run id, evaluation summary).

    The run is created only once the scoring succeeded, so a model that fails leaves no run behind.
    """
    from core.evaluate import score_images, split_images

    registry = registry or Registry()
    config = external_config(dataset, model.name, model, root=root, image_size=image_size, seed=seed,
                             validation_fraction=validation_fraction, split_strategy=split_strategy,
                             group_pattern=group_pattern)
    config.threshold = threshold
    started = time.time()
    data, indices, description = split_images(config, split)
    images = data.raw_data().images  # native dtype: a package applies its own preprocessing

    def predict(sample: Any, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        from core.datasets.io import mask_from_labels

        probability, labels = model.predict(images[index], sample.name)
        if probability.shape != sample.mask.shape:
            raise ExternalModelError(f"{model.source}: output {probability.shape} for the {sample.mask.shape} image "
                                     f"{sample.name}")
        if labels is not None:  # a binary mask's objects are its connected components, by the dataset's rule
            labels = mask_from_labels(labels, data.spec.connectivity, sample.name)[1].astype(np.int32)
        return probability, labels

    try:
        scores, arrays = score_images(data, indices, predict, threshold, n_stored_maps=n_stored_maps,
                                      desc=f"scoring {model.name} on {dataset} ({split})", show_progress=show_progress)
    finally:
        model.close()
    run_id = registry.create_run(config, status="running")
    summary = {"run_id": run_id, "split": split, "split_description": description, "dataset": dataset,
               "positive_class": data.spec.positive_class, "kind": data.spec.kind,
               "checkpoint": Path(model.source).name, "epoch": None, **scores,
               "external_model": {"name": model.name, "source": model.source, **model.details},
               "seconds": time.time() - started}
    registry.set_placement(run_id, executor="external", node=socket.gethostname(),
                           device=f"cpu ({model.details.get('weights') or model.kind})")
    registry.update_progress(run_id, phase="evaluated", epochs=0,
                             stop_reason=f"{config.extra['method']} (scored here, not trained)")
    registry.save_evaluation(run_id, split, summary, arrays)
    registry.transition(run_id, "running", "finished")
    from core.tracking import mirror_run

    mirror_run(run_id, registry)  # when UNETLAB_MLFLOW_URI is set; a failure is a warning
    return run_id, summary
