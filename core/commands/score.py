"""``unetlab score``: score any segmentation against ground truth.

Label images or masks (or two folders of them matched by stem, or a folder written by
``unetlab predict``, every post-processing method side by side) are scored with every
metric; the reading rules are in :mod:`core.scoring`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a label image or mask (or folders of them, or predict's output folder) against ground truth",
        description=(
            "Score a predicted label image or mask against ground truth with every metric: pixel "
            "scores (truth > 0 vs prediction > 0), DSB mAP, the paper's mAP, AP@0.5 with TP/FP/FN "
            "counts, mean matched IoU, V_Rand and V_Info. Given two folders, files are matched by "
            "stem and the set is aggregated (means over images for mAP, V_Rand, V_Info; summed counts). "
            "A folder written by `unetlab predict` is scored as it is, each post-processing method it holds."
        ),
    )
    parser.add_argument("--truth", required=True, type=Path, help="truth label image or mask, or a folder of them")
    parser.add_argument("--prediction", required=True, type=Path,
                        help="predicted label image or mask, or a folder of them (same stems as --truth), "
                             "or the output folder of `unetlab predict`")
    parser.add_argument("--method", action="append", dest="methods", metavar="METHOD",
                        help="with a predict folder: score only this post-processing method (repeatable)")
    parser.add_argument("--kind", choices=("objects", "membrane"),
                        help="how binary masks become objects: objects 8-connected (default), membrane interiors "
                             "4-connected; a predict folder says which")
    parser.add_argument("--json", action="store_true",
                        help="print the scores as one JSON object on the last line of stdout")
    parser.set_defaults(handler=run_score)


def _jsonable(value):
    """JSON has no NaN: undefined scores become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def scored_as_json(scored) -> dict:
    """Every aggregated metric of one ScoredSet under its exact name, the counts, then per image."""
    from core.metrics import METRIC_NAMES

    summary = scored.summary
    named = {key: _jsonable(value) for key, value in summary.named().items()}
    return {
        "method": scored.method,
        "n_images": len(scored.names),
        "dsb_map": named[METRIC_NAMES["dsb_map"]],
        **named,
        "counts": {"tp": summary.instances.tp50, "fp": summary.instances.fp50, "fn": summary.instances.fn50},
        "images": [
            {"name": name, **{key: _jsonable(value) for key, value in scores.named().items()}}
            for name, scores in zip(scored.names, summary.per_image)
        ],
    }


def scores_as_json(truth: Path, prediction: Path, scored_sets: list) -> dict:
    """The object ``--json`` prints: the first method's scores at the top, every method under "methods"."""
    first = scored_as_json(scored_sets[0])
    out = {"truth": str(truth), "prediction": str(prediction), **first}
    if scored_sets[0].method is not None:
        out["methods"] = {scored.method: scored_as_json(scored) for scored in scored_sets}
    return out


def _format(value) -> str:
    if isinstance(value, int):
        return str(value)
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def print_table(truth: Path, prediction: Path, scored_sets: list) -> None:
    from core.metrics import METRIC_NAMES

    n_images = len(scored_sets[0].names)
    print(f"truth: {truth}\nprediction: {prediction}\nimages: {n_images}")
    print("pixel scores compare truth > 0 with prediction > 0; objects are label ids (masks: connected components, "
          "8-connected for objects, 4-connected for membrane interiors)")
    if n_images > 1:
        print("aggregate: means over images for mAP, AP@0.5, V_Rand, V_Info; pixel and object counts summed")
    methods = [scored.method or "score" for scored in scored_sets]
    named = [scored.summary.named() for scored in scored_sets]
    width = max(len(name) for name in named[0])
    if len(scored_sets) > 1:
        print(f"  {'post-processing':<{width}}  " + "  ".join(f"{m:>17}" for m in methods))
    for name in named[0]:
        print(f"  {name:<{width}}  " + "  ".join(f"{_format(values[name]):>17}" for values in named))
    if n_images > 1:
        columns = ("dsb_map", "ap50", "tp50", "fp50", "fn50", "v_rand")
        for scored in scored_sets:
            title = f" ({scored.method})" if scored.method else ""
            print(f"per image{title}: " + " | ".join(METRIC_NAMES[key] for key in columns))
            for name, scores in zip(scored.names, scored.summary.per_image):
                values = scores.named()
                print(f"  {name}: " + "  ".join(_format(values[METRIC_NAMES[key]]) for key in columns))


def run_score(args: argparse.Namespace) -> int:
    from core.scoring import score_files

    methods = [m.strip() for value in args.methods or [] for m in value.split(",") if m.strip()]
    scored_sets = score_files(args.truth, args.prediction, methods or None, args.kind)
    if args.json:
        print(json.dumps(scores_as_json(args.truth, args.prediction, scored_sets)))
    else:
        print_table(args.truth, args.prediction, scored_sets)
    return 0
