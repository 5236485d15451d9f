"""``python -m core evaluate``: score a trained run on its validation part or the test split."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a trained run (pixel, curve, instance scores)")
    parser.add_argument("--run", dest="run_id", required=True, help="run id (see `runs list`)")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="val: the run's validation part; test: the dataset's official test split")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--tta", action="store_true", help="average each prediction over the 4 flips (4x slower)")
    parser.add_argument("--methods", help="comma-separated post-processing methods (default: all)")
    parser.add_argument("--json", action="store_true", help="print the stored summary as one JSON line")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from core.evaluate import evaluate_run, format_evaluation

    methods = tuple(args.methods.split(",")) if args.methods else None
    evaluation = evaluate_run(args.run_id, args.split, checkpoint=args.checkpoint, methods=methods, flip_tta=args.tta,
                              show_progress=not args.quiet and not args.json)
    from core.tracking import mirror_run

    mirror_run(args.run_id)  # the new evaluation, when UNETLAB_MLFLOW_URI is set (a failure is a warning)
    if args.json:
        print(json.dumps({"headline": evaluation.headline(), **evaluation.summary}))
    else:
        print(format_evaluation(evaluation))
    return 0
