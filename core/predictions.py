"""Predicting a set of image files with one model: every post-processing method from one network pass.

:func:`predict_files` runs the network once per image (at the run's training scale unless told
otherwise), turns the probability map into objects with each chosen post-processing method,
and writes, per image ``STEM``:

- ``STEM_labels-METHOD.png``: the instance labels of each method (16-bit; ``.tif``, 32-bit,
  above 65,535 objects), at the image's own size;
- ``STEM_mask.png``: the foreground mask at the threshold (0/255);
- ``STEM_probability.png`` (8-bit, probability x 255) or ``.tif`` (float32), when asked;

and a manifest (:data:`core.scoring.MANIFEST`) saying how all of it was made, which
``unetlab score`` reads, so the folder is scored as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.errors import UNetLabError
from core.scoring import PredictedImage, PredictionManifest

#: How probability maps are kept: not at all, 8-bit PNG (probability x 255, rounded), float32 TIFF.
PROBABILITY_FORMATS = ("none", "uint8", "float32")


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"components,watershed"``, ``"all"`` or a list -> known post-processing methods, in order.

    Raises
    ------
    UNetLabError
        An unknown method, named with the known ones (checked before any model is loaded).
    """
    from core.postprocess import PARAMETERS

    names = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if part.strip()]
    if names == ["all"]:
        return list(PARAMETERS)  # those a model cannot use (seeded-watershed without outlines) are left out later
    unknown = [name for name in names if name not in PARAMETERS]
    if unknown or not names:
        raise UNetLabError(f"post-processing method {', '.join(unknown) or '(none)'} is unknown; choose from "
                           f"{', '.join(PARAMETERS)}, a comma-separated list of them, or 'all'")
    return list(dict.fromkeys(names))


def dataset_kind(dataset_name: str) -> str:
    """The kind ("objects" or "membrane") of a run's dataset; a dataset this version does not know: objects."""
    from core.datasets import get_spec
    from core.errors import DatasetError

    try:
        return get_spec(dataset_name).kind
    except DatasetError:
        return "objects"


def label_file_name(stem: str, method: str, labels: np.ndarray) -> str:
    return f"{stem}_labels-{method}" + (".png" if labels.max(initial=0) <= np.iinfo(np.uint16).max else ".tif")


def write_labels(path: Path, labels: np.ndarray) -> None:
    """A label image as 16-bit PNG (or 32-bit TIFF when the ids do not fit)."""
    if path.suffix == ".png":
        from PIL import Image

        Image.fromarray(labels.astype(np.uint16)).save(path)
    else:
        import tifffile

        tifffile.imwrite(path, labels.astype(np.uint32))


def predict_files(
    loaded,
    files: Sequence[Path],
    output: Path,
    methods: Sequence[str],
    threshold: float | None = None,
    scale: str = "training",
    probabilities: str = "none",
    tile_size: int | None = None,
    overlap: int | None = None,
    flip_tta: bool = False,
    checkpoint: str = "",
    on_image: Callable[[PredictedImage], None] | None = None,
    plane: Any = None,
) -> PredictionManifest:
    """Predict every file with ``loaded`` (a :class:`core.inference.LoadedModel`) and write the results.

    Parameters
    ----------
    files : image files (PNG, TIFF, JPEG), each read as float32 (H, W, C) in [0, 1]
    output : folder, created; files it already holds with the same names are replaced
    methods : post-processing methods, all computed from the same probability map
    threshold : foreground threshold in (0, 1) (default: the run's)
    scale : "training" (resize to the run's image size and back) or "native"
    probabilities : one of :data:`PROBABILITY_FORMATS`
    on_image : called after each image (progress)
    plane : core.datasets.ome.Plane, the channel / z-plane / time point of multi-dimensional files

    Returns
    -------
    PredictionManifest
        Also written to ``output``.
    """
    from core.datasets import read_image
    from core.inference import predict_image
    from core.postprocess import postprocess

    config = loaded.config
    threshold = config.threshold if threshold is None else float(threshold)
    if not 0 < threshold < 1:
        raise UNetLabError(f"threshold must be between 0 and 1 (exclusive), got {threshold:g}")
    if probabilities not in PROBABILITY_FORMATS:
        raise UNetLabError(f"probabilities: choose one of {', '.join(PROBABILITY_FORMATS)}, not {probabilities!r}")
    from core.postprocess import methods_for

    usable = methods_for(config.output_channels > 1)
    if not any(method in usable for method in methods):
        raise UNetLabError(f"{', '.join(methods)} needs a model trained with target 'mask+contour'; this model "
                           f"predicts the mask only: choose from {', '.join(usable)}")
    methods = [method for method in methods if method in usable]
    kind = dataset_kind(config.dataset)
    manifest = PredictionManifest(checkpoint=str(checkpoint), run_config=config.to_dict(), kind=kind,
                                  threshold=threshold, methods=list(methods), scale=scale)
    output.mkdir(parents=True, exist_ok=True)
    from core.datasets.ome import strip_suffix

    # OME files are named by the stem before .ome.tif: a.ome.tif gives a_labels-....png.
    stems = [strip_suffix(path.name) for path in files]
    if len(set(stems)) != len(stems):
        raise UNetLabError(f"two input images share a file stem ({sorted(s for s in stems if stems.count(s) > 1)[0]}); "
                           "their outputs would overwrite each other")
    for path, stem in zip(files, stems):
        prediction = predict_image(loaded, read_image(path, plane=plane), tile_size=tile_size, overlap=overlap,
                                   flip_tta=flip_tta, source=str(path), scale=scale)
        probability = prediction.probability
        image = PredictedImage(stem=stem, source=str(path), shape=tuple(probability.shape),
                               network_shape=tuple(prediction.network_shape), scale=prediction.scale,
                               labels={}, mask=f"{stem}_mask.png", seconds=prediction.seconds)
        for method in methods:
            labels = postprocess(probability, method, contour=prediction.contour, threshold=threshold,
                                 connectivity=manifest.connectivity)
            image.labels[method] = label_file_name(stem, method, labels)
            image.objects[method] = int(labels.max(initial=0))
            write_labels(output / image.labels[method], labels)
        from PIL import Image

        Image.fromarray(((probability >= threshold) * 255).astype(np.uint8)).save(output / image.mask)
        if probabilities == "uint8":
            image.probability = f"{stem}_probability.png"
            Image.fromarray(np.rint(probability * 255).astype(np.uint8)).save(output / image.probability)
        elif probabilities == "float32":
            import tifffile

            image.probability = f"{stem}_probability.tif"
            tifffile.imwrite(output / image.probability, probability.astype(np.float32))
        manifest.images.append(image)
        if on_image is not None:
            on_image(image)
    manifest.write(output)
    return manifest
