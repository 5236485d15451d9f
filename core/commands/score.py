"""``python -m core score``: score any segmentation against ground truth.

Scores a predicted label image or mask (or two folders of them, matched by file stem)
with every metric of :mod:`core.metrics`, so the output of other tools (Cellpose,
StarDist, Fiji) is scored on the same footing as U-Net Lab's own predictions.

Reading rules, the same for truth and prediction:

- ``.tif``/``.tiff`` are read with tifffile, ``.png``/``.jpg``/``.jpeg`` with Pillow
  (16-bit PNG labels included); a 3-D TIFF (N, H, W) is N slices scored one by one;
- an image holding only 0 and one other value is a binary mask: its 4-connected
  components become the instances; any other integer image is used as a label image;
- float images are accepted only when every value is a whole number (Fiji saves labels as
  32-bit float); probability maps must be post-processed first.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from core.errors import DatasetError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a label image or mask (or folders of them) against ground truth",
        description=(
            "Score a predicted label image or mask against ground truth with every metric: pixel "
            "scores (truth > 0 vs prediction > 0), DSB mAP, the paper's mAP, AP@0.5 with TP/FP/FN "
            "counts, mean matched IoU, V_Rand and V_Info. Given two folders, files are matched by "
            "stem and the set is aggregated (means over images for mAP, V_Rand, V_Info; summed counts)."
        ),
    )
    parser.add_argument("--truth", required=True, type=Path, help="truth label image or mask, or a folder of them")
    parser.add_argument("--prediction", required=True, type=Path,
                        help="predicted label image or mask, or a folder of them (same stems as --truth)")
    parser.add_argument("--json", action="store_true",
                        help="print the scores as one JSON object on the last line of stdout")
    parser.set_defaults(handler=run_score)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def read_image(path: Path):
    """Pixels of a TIFF, PNG or JPEG file as a numpy array (2-D, or 3-D for a TIFF stack)."""
    import numpy as np

    from core.datasets.io import IMAGE_SUFFIXES  # here, not at the top: `python -m core --help` stays fast

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
        raise DatasetError(f"{path}: cannot be read as an image ({error})") from error
    if has_channels:
        # Only grey content stored with colour channels is a valid label image; alpha is ignored.
        colours = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
        if not all(np.array_equal(colours[..., 0], colours[..., channel]) for channel in range(colours.shape[-1])):
            raise DatasetError(f"{path}: colour image with differing channels; expected a grey label image or mask")
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise DatasetError(f"{path}: expected a 2-D image or a 3-D stack, got shape {image.shape}")
    return image


def to_label_slices(image, path: Path, role: str) -> list:
    """The instance label image of each slice of ``image`` (see the module docstring for the rules)."""
    import numpy as np

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
    return [binary_to_instances(plane) if is_mask else plane for plane in slices]


def pair_files(truth: Path, prediction: Path) -> list[tuple[str, Path, Path]]:
    """(name, truth file, prediction file) for two files, or for two folders matched by stem."""
    if not truth.exists():
        raise DatasetError(f"truth {truth}: no such file or folder")
    if not prediction.exists():
        raise DatasetError(f"prediction {prediction}: no such file or folder")
    if truth.is_dir() != prediction.is_dir():
        raise DatasetError(f"give two files or two folders, got truth {truth} and prediction {prediction}")
    if not truth.is_dir():
        return [(truth.stem, truth, prediction)]

    from core.datasets.io import IMAGE_SUFFIXES  # here, not at the top: `python -m core --help` stays fast

    def images_by_stem(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                if path.stem in found:
                    raise DatasetError(f"{folder}: two images share the stem {path.stem!r} ({found[path.stem].name}, {path.name})")
                found[path.stem] = path
        if not found:
            raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return found

    truth_files, predicted_files = images_by_stem(truth), images_by_stem(prediction)
    only_truth = sorted(set(truth_files) - set(predicted_files))
    only_prediction = sorted(set(predicted_files) - set(truth_files))
    if only_truth or only_prediction:
        def listing(stems: list[str]) -> str:
            return ", ".join(stems[:5]) + (f" and {len(stems) - 5} more" if len(stems) > 5 else "") or "none"

        raise DatasetError(
            f"unmatched stems: in truth {truth} only: {listing(only_truth)}; "
            f"in prediction {prediction} only: {listing(only_prediction)}"
        )
    return [(stem, truth_files[stem], predicted_files[stem]) for stem in sorted(truth_files)]


# --------------------------------------------------------------------------------------
# Scoring and output
# --------------------------------------------------------------------------------------


def score_pairs(pairs: list[tuple[str, Path, Path]]):
    """Per-image names and scores, and the set's aggregate (``core.metrics.LabelSetScores``)."""
    from core.metrics import score_label_image, summarize_label_scores

    names, per_image = [], []
    for name, truth_path, predicted_path in pairs:
        truth_image, predicted_image = read_image(truth_path), read_image(predicted_path)
        if truth_image.shape != predicted_image.shape:
            raise DatasetError(
                f"size mismatch: truth {truth_path} is {truth_image.shape}, prediction {predicted_path} is {predicted_image.shape}"
            )
        truth_slices = to_label_slices(truth_image, truth_path, "truth")
        predicted_slices = to_label_slices(predicted_image, predicted_path, "prediction")
        for index, (truth_labels, predicted_labels) in enumerate(zip(truth_slices, predicted_slices)):
            names.append(name if len(truth_slices) == 1 else f"{name}[{index}]")
            per_image.append(score_label_image(truth_labels, predicted_labels))
    return names, summarize_label_scores(per_image)


def _jsonable(value):
    """JSON has no NaN: undefined scores become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def scores_as_json(truth: Path, prediction: Path, names: list[str], summary) -> dict:
    """The object ``--json`` prints: every aggregated metric under its exact name, then per image."""
    from core.metrics import METRIC_NAMES

    named = {key: _jsonable(value) for key, value in summary.named().items()}
    return {
        "truth": str(truth),
        "prediction": str(prediction),
        "n_images": len(names),
        "dsb_map": named[METRIC_NAMES["dsb_map"]],
        **named,
        "counts": {"tp": summary.instances.tp50, "fp": summary.instances.fp50, "fn": summary.instances.fn50},
        "images": [
            {"name": name, **{key: _jsonable(value) for key, value in scores.named().items()}}
            for name, scores in zip(names, summary.per_image)
        ],
    }


def _format(value) -> str:
    if isinstance(value, int):
        return str(value)
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def print_table(truth: Path, prediction: Path, names: list[str], summary) -> None:
    from core.metrics import METRIC_NAMES

    print(f"truth: {truth}\nprediction: {prediction}\nimages: {len(names)}")
    print("pixel scores compare truth > 0 with prediction > 0; objects are label ids (masks: 4-connected components)")
    if len(names) > 1:
        print("aggregate: means over images for mAP, AP@0.5, V_Rand, V_Info; pixel and object counts summed")
    named = summary.named()
    width = max(len(name) for name in named)
    for name, value in named.items():
        print(f"  {name:<{width}}  {_format(value)}")
    if len(names) > 1:
        columns = ("dsb_map", "ap50", "tp50", "fp50", "fn50", "v_rand")
        print("per image: " + " | ".join(METRIC_NAMES[key] for key in columns))
        for name, scores in zip(names, summary.per_image):
            values = scores.named()
            print(f"  {name}: " + "  ".join(_format(values[METRIC_NAMES[key]]) for key in columns))


def run_score(args: argparse.Namespace) -> int:
    pairs = pair_files(args.truth, args.prediction)
    names, summary = score_pairs(pairs)
    if args.json:
        print(json.dumps(scores_as_json(args.truth, args.prediction, names, summary)))
    else:
        print_table(args.truth, args.prediction, names, summary)
    return 0
