"""``unetlab export``: a trained run as a bioimage.io model package (see :mod:`core.export`)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a trained run as a bioimage.io model package (Fiji/deepImageJ, ilastik, BiaPy, QuPath)",
        description="Writes a bioimage.io model package (spec 0.5: rdf.yaml, PyTorch state dict + TorchScript + "
                    "ONNX weights, a test input/output pair, the preprocessing, the training data and validation "
                    "scores in its documentation, a cover image) and tests it with bioimageio.core, as "
                    "`bioimageio test` does. Needs nothing from the network.",
    )
    parser.add_argument("--run", dest="run_id", required=True, help="a trained run (see `runs list`)")
    parser.add_argument("--out", required=True, help="the package folder (created; must be new or empty)")
    parser.add_argument("--no-test", action="store_true",
                        help="skip bioimageio.core's test of the package (it takes about 20 s)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from core.export import export_run

    result = export_run(args.run_id, args.out, validate=not args.no_test)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"wrote the bioimage.io package of run {args.run_id} to {result.folder} ({result.rdf.name}) "
          f"in {result.seconds:.1f} s")
    for name, how in result.converted_by.items():
        print(f"  {name}: {how}")
    for name, difference in result.max_abs_difference.items():
        print(f"  {name} output vs ours on the test input: max |difference| {difference:.2e}")
    print(f"  bioimageio.core test: {result.validation or 'skipped (--no-test)'}")
    return 0
