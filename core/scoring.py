"""Scoring segmentations stored as files: label images or masks, and ``predict``'s output folders.

Scores a predicted label image or mask (or two folders of them) against ground truth with
every metric of :mod:`core.metrics`, so the output of other tools (Cellpose, StarDist,
nnU-Net, Fiji) is scored on the same footing as U-Net Lab's own predictions.

Reading rules, the same for truth and prediction:

- ``.tif``/``.tiff`` are read with tifffile, ``.png``/``.jpg``/``.jpeg`` with Pillow
  (16-bit PNG labels included); a 3-D TIFF (N, H, W) is N slices scored one by one;
- an image holding only 0 and one other value is a binary mask: its connected components
  become the objects, by the project's one rule (:data:`core.datasets.base.CONNECTIVITY`:
  8-connected for separate objects, 4-connected for the cell interiors of membrane sets);
- any other integer image is a label image, used as it is; float images are accepted only
  when every value is a whole number (Fiji saves labels as 32-bit float).

A folder written by ``unetlab predict`` holds a manifest, :data:`MANIFEST`, naming each
image's label file per post-processing method, the dataset kind (so the same rule turns
masks into objects) and how the images were predicted; :func:`pair_files` reads it, so
such a folder is scored as it is, every method side by side.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets.base import CONNECTIVITY
from core.datasets.io import IMAGE_SUFFIXES
from core.errors import DatasetError

#: The file ``unetlab predict`` writes beside its outputs.
MANIFEST = "predictions.json"


# ---- the manifest of a prediction folder ----------------------------------------------------


@dataclass
class PredictedImage:
    """One input image of a prediction folder and the files made from it (names relative to the folder)."""

    stem: str
    source: str
    shape: tuple[int, int]
    network_shape: tuple[int, int]
    scale: str
    labels: dict[str, str]  # post-processing method -> label image file
    mask: str
    probability: str | None = None
    objects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class PredictionManifest:
    """What a prediction folder holds and how it was made."""

    checkpoint: str
    run_config: dict[str, Any]
    kind: str  # "objects" or "membrane": how masks become objects
    threshold: float
    methods: list[str]
    scale: str
    images: list[PredictedImage] = field(default_factory=list)

    @property
    def connectivity(self) -> int:
        return CONNECTIVITY[self.kind]

    def write(self, folder: Path) -> Path:
        from core.fileio import atomic_write_text

        return atomic_write_text(Path(folder) / MANIFEST, json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, folder: Path) -> PredictionManifest | None:
        """The manifest of ``folder``, or None when it has none.

        Raises
        ------
        DatasetError
            When the manifest exists but cannot be read.
        """
        path = Path(folder) / MANIFEST
        if not path.is_file():
            return None
        try:
            values = json.loads(path.read_text())
            images = [PredictedImage(**{**image, "shape": tuple(image["shape"]),
                                        "network_shape": tuple(image["network_shape"])})
                      for image in values.pop("images")]
            manifest = cls(**values, images=images)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise DatasetError(f"{path}: not a readable prediction manifest ({type(error).__name__}: "
                               f"{str(error)[:160]}); delete it to score the folder's files by stem") from None
        if manifest.kind not in CONNECTIVITY:
            raise DatasetError(f"{path}: unknown dataset kind {manifest.kind!r}")
        return manifest


# ---- reading label files ----------------------------------------------------------------------


def read_label_file(path: Path) -> np.ndarray:
    """Pixels of a TIFF, PNG or JPEG label file (2-D, or 3-D for a TIFF stack).

    Raises
    ------
    DatasetError
        A missing or unreadable file, an unsupported type, or a colour image.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DatasetError(f"{path}: unsupported file type {suffix!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            image = np.asarray(tifffile.imread(path))
            # (N, H, W) is a stack of slices; (H, W, 3 or 4) an RGB(A) image.
            has_channels = image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4
        else:
            from PIL import Image

            with Image.open(path) as opened:
                image = np.asarray(opened)
            has_channels = image.ndim == 3  # LA, RGB or RGBA
    except Exception as error:  # any decoder failure means the same thing to the user
        raise DatasetError(f"{path}: cannot be read as an image ({type(error).__name__}: {str(error)[:160]})") from None
    if has_channels:
        # Only grey content stored with colour channels is a valid label image; alpha is ignored.
        colours = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
        if not all(np.array_equal(colours[..., 0], colours[..., channel]) for channel in range(colours.shape[-1])):
            raise DatasetError(f"{path}: colour image with differing channels; expected a grey label image or mask")
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise DatasetError(f"{path}: expected a 2-D image or a 3-D stack, got shape {image.shape}")
    return image


def to_label_slices(image: np.ndarray, path: Path, role: str, connectivity: int = CONNECTIVITY["objects"]
                    ) -> list[np.ndarray]:
    """The instance label image of each slice of ``image`` (see the module docstring for the rules).

    Parameters
    ----------
    image : ndarray, integer, bool or whole-valued float, shape (H, W) or (N, H, W)
    path, role : how messages name the file ("truth" or "prediction")
    connectivity : 1 or 2, how a binary mask becomes objects
    """
    from core.postprocess import binary_to_instances

    if image.dtype == bool:
        image = image.astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        whole = np.isfinite(image) & (image == np.round(image))
        if not whole.all():
            example = image[~whole].flat[0]
            raise DatasetError(
                f"{role} {path} is not integer: dtype {image.dtype} with values such as {example:g}; "
                "expected a label image or mask (threshold and post-process probability maps first)"
            )
        image = image.astype(np.int64)
    elif not np.issubdtype(image.dtype, np.integer):
        raise DatasetError(f"{role} {path}: unsupported pixel type {image.dtype}; expected integer labels")
    if image.size and image.min() < 0:
        raise DatasetError(f"{role} {path} has negative values (min {image.min()}); label ids must be >= 0")
    largest = image.max() if image.size else 0
    is_mask = largest > 0 and bool(np.all((image == 0) | (image == largest)))
    slices = image[None] if image.ndim == 2 else image
    return [binary_to_instances(plane, connectivity=connectivity) if is_mask else plane for plane in slices]


# ---- pairing truth and prediction ---------------------------------------------------------------


@dataclass
class Pairing:
    """Truth and prediction files matched by name, for one post-processing method (None: plain files)."""

    method: str | None
    pairs: list[tuple[str, Path, Path]]
    connectivity: int


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in found:
                raise DatasetError(f"{folder}: two images share the stem {path.stem!r} ({found[path.stem].name}, {path.name})")
            found[path.stem] = path
    if not found:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _match(truth: Path, truth_files: dict[str, Path], prediction: Path, predicted: dict[str, Path]
           ) -> list[tuple[str, Path, Path]]:
    only_truth = sorted(set(truth_files) - set(predicted))
    only_prediction = sorted(set(predicted) - set(truth_files))
    if only_truth or only_prediction:
        def listing(stems: list[str]) -> str:
            return ", ".join(stems[:5]) + (f" and {len(stems) - 5} more" if len(stems) > 5 else "") or "none"

        raise DatasetError(f"unmatched stems: in truth {truth} only: {listing(only_truth)}; "
                           f"in prediction {prediction} only: {listing(only_prediction)}")
    return [(stem, truth_files[stem], predicted[stem]) for stem in sorted(truth_files)]


def pair_files(truth: Path, prediction: Path, methods: list[str] | None = None, kind: str | None = None
               ) -> list[Pairing]:
    """Match truth with prediction: two files, two folders by stem, or a ``predict`` folder by its manifest.

    Parameters
    ----------
    truth, prediction : a file each, or a folder each
    methods : for a ``predict`` folder, the post-processing methods to score (default: all it holds)
    kind : "objects" or "membrane", the rule turning masks into objects (default: the
        manifest's, else "objects")

    Returns
    -------
    list of Pairing, one per method (a single one with method None for plain files)

    Raises
    ------
    DatasetError
        Missing files, a file paired with a folder, unmatched stems, an unknown method.
    """
    truth, prediction = Path(truth), Path(prediction)
    if not truth.exists():
        raise DatasetError(f"truth {truth}: no such file or folder")
    if not prediction.exists():
        raise DatasetError(f"prediction {prediction}: no such file or folder")
    if truth.is_dir() != prediction.is_dir():
        raise DatasetError(f"give two files or two folders, got truth {truth} and prediction {prediction}")
    if kind is not None and kind not in CONNECTIVITY:
        raise DatasetError(f"--kind {kind!r}: expected one of {', '.join(CONNECTIVITY)}")
    if not truth.is_dir():
        return [Pairing(None, [(truth.stem, truth, prediction)], CONNECTIVITY[kind or "objects"])]
    manifest = PredictionManifest.read(prediction)
    truth_files = _images_by_stem(truth)
    if manifest is None:
        if methods:
            raise DatasetError(f"{prediction} has no {MANIFEST} (it was not written by `unetlab predict`), "
                               "so it has one label image per stem and no methods to choose from")
        return [Pairing(None, _match(truth, truth_files, prediction, _images_by_stem(prediction)),
                        CONNECTIVITY[kind or "objects"])]
    unknown = [method for method in methods or [] if method not in manifest.methods]
    if unknown:
        raise DatasetError(f"{prediction} holds the methods {', '.join(manifest.methods)}, not {', '.join(unknown)}")
    connectivity = CONNECTIVITY[kind or manifest.kind]
    return [Pairing(method, _match(truth, truth_files, prediction,
                                   {image.stem: prediction / image.labels[method] for image in manifest.images}),
                    connectivity)
            for method in (methods or manifest.methods)]


# ---- scoring ------------------------------------------------------------------------------------


@dataclass
class ScoredSet:
    """The scores of one pairing: per-image names and the set's aggregate (``LabelSetScores``)."""

    method: str | None
    names: list[str]
    summary: Any


def score_pairing(pairing: Pairing) -> ScoredSet:
    """Score every pair of a :class:`Pairing` (a stack is scored slice by slice)."""
    from core.metrics import score_label_image, summarize_label_scores

    names, per_image = [], []
    for name, truth_path, predicted_path in pairing.pairs:
        truth_image, predicted_image = read_label_file(truth_path), read_label_file(predicted_path)
        if truth_image.shape != predicted_image.shape:
            raise DatasetError(f"size mismatch: truth {truth_path} is {truth_image.shape}, "
                               f"prediction {predicted_path} is {predicted_image.shape}")
        truth_slices = to_label_slices(truth_image, truth_path, "truth", pairing.connectivity)
        predicted_slices = to_label_slices(predicted_image, predicted_path, "prediction", pairing.connectivity)
        for index, (truth_labels, predicted_labels) in enumerate(zip(truth_slices, predicted_slices)):
            names.append(name if len(truth_slices) == 1 else f"{name}[{index}]")
            per_image.append(score_label_image(truth_labels, predicted_labels))
    return ScoredSet(pairing.method, names, summarize_label_scores(per_image))


def score_files(truth: Path, prediction: Path, methods: list[str] | None = None, kind: str | None = None
                ) -> list[ScoredSet]:
    """:func:`pair_files` then :func:`score_pairing` for each method."""
    return [score_pairing(pairing) for pairing in pair_files(truth, prediction, methods, kind)]
