"""``unetlab predict``: instance labels, masks and (optionally) probability maps for new images,
every chosen post-processing method from one network pass; with ``--truth``, scored at once."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images with a trained checkpoint (and score them with --truth)",
        description="Writes, per image STEM: STEM_labels-METHOD.png (16-bit instance labels of each "
                    "post-processing method; .tif above 65,535 objects), STEM_mask.png (0/255), optionally "
                    "STEM_probability.png/.tif, and predictions.json saying how they were made. "
                    "`unetlab score --prediction` reads the folder as it is.",
    )
    parser.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by training")
    parser.add_argument("--input", required=True,
                        help="an image file (PNG, TIFF, JPEG, OME-TIFF), an OME-Zarr image folder, or a folder of them; "
                             "an OME-Zarr image is segmented block by block and its labels written back into it "
                             "as the labels group labels/unetlab-components")
    parser.add_argument("--output", required=True, help="folder for the results (created)")
    parser.add_argument("--truth", help="a truth file or folder (same stems): score the predictions right away, "
                                        "as `unetlab score --truth TRUTH --prediction OUTPUT` would")
    parser.add_argument("--threshold", type=float, help="foreground threshold in (0, 1) (default: the run's)")
    parser.add_argument("--instances", default="components",
                        help="post-processing method(s): components, watershed, kmeans-watershed, a comma-separated "
                             "list, or all (one network pass for all of them)")
    parser.add_argument("--scale", choices=("training", "native"), default="training",
                        help="training (default): resize each image to the size the run was trained at and the "
                             "results back; native: predict at the image's own size")
    parser.add_argument("--probabilities", choices=("none", "uint8", "float32"), default="none",
                        help="also keep the probability maps: uint8 PNG (x 255) or float32 TIFF (large)")
    parser.add_argument("--tile", type=int, help="tile size in pixels (default: the run's)")
    parser.add_argument("--overlap", type=int, help="tile overlap in pixels (default: a quarter tile, at most 64)")
    parser.add_argument("--tta", action="store_true", help="average over flips (4x slower)")
    parser.add_argument("--device", default="auto")
    plane = parser.add_argument_group("multi-dimensional images (OME-TIFF, OME-Zarr)")
    plane.add_argument("--channel", type=int, help="the channel to segment (default: all of a grey or colour "
                                                   "image, else channel 0)")
    plane.add_argument("--z", type=int, help="the z-plane to segment (default 0)")
    plane.add_argument("--t", type=int, default=0, help="the time point to segment (default 0)")
    plane.add_argument("--block", type=int, default=1024,
                       help="OME-Zarr: side of the blocks read and segmented at a time, pixels (default 1024)")
    parser.set_defaults(handler=run)


def input_files(path: Path) -> list[Path]:
    """The image files to predict: one file, or the images of a folder (sorted)."""
    from core.datasets.io import IMAGE_SUFFIXES  # here, not at the top: `unetlab --help` stays fast
    from core.datasets.ome import is_ome_zarr
    from core.errors import UNetLabError

    if is_ome_zarr(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (
            (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or (p.is_dir() and is_ome_zarr(p))))
        if not files:
            raise UNetLabError(f"no PNG, TIFF, JPEG or OME-Zarr images in {path}")
        return files
    if not path.exists():
        raise UNetLabError(f"input {path} does not exist")
    return [path]


def check_arguments(args: argparse.Namespace) -> list[str]:
    """Every argument checked before the model is loaded; returns the post-processing methods."""
    from core.errors import UNetLabError
    from core.predictions import parse_methods

    methods = parse_methods(args.instances)
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UNetLabError(f"--threshold must be between 0 and 1 (exclusive), got {args.threshold:g}")
    if args.tile is not None and args.tile < 16:
        raise UNetLabError(f"--tile must be at least 16 pixels, got {args.tile}")
    if args.overlap is not None and not 0 <= args.overlap < (args.tile or 512):
        raise UNetLabError(f"--overlap must be in [0, tile size), got {args.overlap}")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UNetLabError(f"--output {output} is a file; give a folder for the results")
    if args.truth is not None and not Path(args.truth).exists():
        raise UNetLabError(f"--truth {args.truth}: no such file or folder")
    return methods


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core.inference import load_model
    from core.predictions import predict_files

    from core.datasets.ome import Plane

    methods = check_arguments(args)
    files = input_files(Path(args.input))
    plane = Plane(channel=args.channel, z=args.z, t=args.t)
    zarr_images = [path for path in files if path.is_dir()]
    files = [path for path in files if not path.is_dir()]
    if zarr_images and (methods != ["components"] or args.truth is not None):
        from core.errors import UNetLabError

        raise UNetLabError("an OME-Zarr image is segmented block by block into connected components only "
                           "(--instances components, no --truth); score its labels with `unetlab score` afterwards")
    loaded = load_model(args.checkpoint, device=args.device)
    output = Path(args.output)
    if zarr_images:
        predict_zarr_images(loaded, zarr_images, plane, args, output)
        if not files:
            return 0
    with tqdm(total=len(files), desc="predicting", unit="image") as bar:
        def report(image) -> None:
            bar.update(1)
            objects = ", ".join(f"{count} objects ({method})" for method, count in image.objects.items())
            how = ("at its own size" if image.scale == "native" else
                   f"resized to {image.network_shape[1]} x {image.network_shape[0]} (training scale) and back")
            tqdm.write(f"{Path(image.source).name}: {objects}; predicted {how}")

        manifest = predict_files(loaded, files, output, methods, threshold=args.threshold, scale=args.scale,
                                 probabilities=args.probabilities, tile_size=args.tile, overlap=args.overlap,
                                 flip_tta=args.tta, checkpoint=args.checkpoint, on_image=report,
                                 plane=plane)
    print(f"wrote {len(files)} result sets to {output} (threshold {manifest.threshold:g}, "
          f"methods {', '.join(methods)}, manifest {output / 'predictions.json'})")
    if args.truth is None:
        return 0
    from core.commands.score import print_table
    from core.scoring import score_files

    scored_sets = score_files(Path(args.truth), output)
    print()
    print_table(Path(args.truth), output, scored_sets)
    return 0


def predict_zarr_images(loaded, images: list[Path], plane, args: argparse.Namespace, output: Path) -> None:
    """Segment each OME-Zarr image block by block, write its labels back into it, and list what was
    written in ``OUTPUT/zarr_predictions.json``."""
    import dataclasses
    import json

    from core.fileio import atomic_write_text
    from core.ome_predict import predict_ome_zarr
    from core.predictions import dataset_kind

    connectivity = 1 if dataset_kind(loaded.config.dataset) == "membrane" else 2
    if loaded.config.image_size:
        print(f"note: the run was trained on images resized to {loaded.config.image_size} x "
              f"{loaded.config.image_size}; OME-Zarr images are segmented at their own size")
    results = []
    for path in images:
        result = predict_ome_zarr(loaded, path, plane, name="unetlab-components", threshold=args.threshold,
                                  block=args.block, tile_size=args.tile, overlap=args.overlap,
                                  connectivity=connectivity)
        print(f"{path.name}: {result.objects} objects in {result.blocks} block(s) at {result.plane}; labels written "
              f"to {path / result.labels} ({result.seconds:.1f} s)")
        results.append({**dataclasses.asdict(result), "checkpoint": str(args.checkpoint)})
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "zarr_predictions.json", json.dumps(results, indent=1))
