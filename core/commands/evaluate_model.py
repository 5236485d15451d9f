"""``unetlab evaluate-model``: another tool's 2D model (a bioimage.io package or an ONNX file) scored
on the images our runs are validated on, stored as a run of method "external: NAME"
(see :mod:`core.external`)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate-model",
        help="score a bioimage.io package or ONNX model on a run's validation images; stored as an external run",
        description="Runs a 2D bioimage.io model (its folder, rdf.yaml/bioimageio.yaml or .zip) or an .onnx "
                    "file on exactly the images a run with the same dataset, seed and split settings is "
                    "validated on (or the official test split), scores it with every metric `evaluate` gives "
                    "and stores it as a finished run of method 'external: NAME', shown beside our runs.",
    )
    parser.add_argument("--model", help="a bioimage.io package (folder, rdf.yaml or .zip), an .onnx file, or a folder "
                                         "of another tool's label images named by image (NAME.png/.tif, NAME_cp_masks...)")
    parser.add_argument("--write-images", metavar="DIR",
                        help="write the split's images as DIR/NAME.tif (for another tool to segment) and stop")
    parser.add_argument("--dataset", required=True, help="a dataset name (see `datasets list`)")
    parser.add_argument("--root", help="the dataset's folder, for datasets read from files")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="val: the validation part of runs with this seed (default); test: the official test split")
    parser.add_argument("--seed", type=int, default=0, help="the seed whose validation part is scored (default 0)")
    parser.add_argument("--image-size", type=int, help="resize images as runs with --image-size N do")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--split-strategy", default="auto", help="as in `train` (default auto)")
    parser.add_argument("--group-pattern", help="as in `train`: regex on file stems naming an image's group")
    parser.add_argument("--name", help="how the run names the model: 'external: NAME' (default: the package's name "
                                       "or the ONNX file's stem)")
    parser.add_argument("--weights", help="bioimage.io: the weight format to run (onnx, torchscript, "
                                          "pytorch_state_dict; default: bioimageio.core's choice)")
    parser.add_argument("--output-channel", type=int, help="the output channel holding the foreground "
                                                           "(needed when the model outputs several)")
    parser.add_argument("--activation", choices=("none", "sigmoid", "softmax"), default="none",
                        help="for models that output logits: sigmoid (one channel) or softmax (per class)")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground threshold (default 0.5)")
    parser.add_argument("--json", action="store_true", help="print the run id and headline as one JSON line")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from core.errors import UNetLabError
    from core.evaluate import Evaluation, format_evaluation
    from core.external import evaluate_external, load_external_model

    if not 0 < args.threshold < 1:
        raise UNetLabError(f"--threshold must be between 0 and 1 (exclusive), got {args.threshold:g}")
    split_settings = dict(root=args.root, image_size=args.image_size, seed=args.seed,
                          validation_fraction=args.validation_fraction, split_strategy=args.split_strategy,
                          group_pattern=args.group_pattern)
    if args.write_images:
        from core.external import write_split_images

        written = write_split_images(args.write_images, args.dataset, args.split, **split_settings)
        print(f"wrote the {len(written)} images of {args.dataset} ({args.split}, seed {args.seed}) to "
              f"{args.write_images}; segment them with any tool, then: unetlab evaluate-model --model LABELS_DIR "
              f"--dataset {args.dataset} --split {args.split} --seed {args.seed}")
        return 0
    if not args.model:
        raise UNetLabError("give --model (a package, an .onnx file or a folder of label images) or --write-images DIR")
    model = load_external_model(args.model, name=args.name, weights=args.weights,
                                output_channel=args.output_channel, activation=args.activation)
    run_id, summary = evaluate_external(
        model, args.dataset, args.split, threshold=args.threshold, show_progress=not (args.quiet or args.json),
        **split_settings)
    evaluation = Evaluation(run_id=run_id, split=args.split, summary=summary)
    if args.json:
        print(json.dumps({"run_id": run_id, "method": f"external: {model.name}", "headline": evaluation.headline()}))
        return 0
    print(f"stored as run {run_id} (method 'external: {model.name}', {model.kind})")
    print(format_evaluation(evaluation).replace(f"checkpoint {summary['checkpoint']} (epoch None)",
                                                f"model {summary['checkpoint']}"))
    return 0
