"""``python -m core predict``: probability maps, masks and instance labels for new images."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="segment images with a trained checkpoint",
        description="Writes, per image: NAME_probability.tif (float32), NAME_mask.png (0/255) and "
                    "NAME_labels.png (16-bit instance labels; .tif above 65,535 objects).",
    )
    parser.add_argument("--checkpoint", required=True, help="a best.pt or last.pt written by training")
    parser.add_argument("--input", required=True, help="an image file (PNG, TIFF, JPEG) or a folder of them")
    parser.add_argument("--output", required=True, help="folder for the results (created)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--instances", default="components",
                        help="post-processing method: components, watershed or kmeans-watershed")
    parser.add_argument("--tile", type=int, default=512, help="tile size in pixels")
    parser.add_argument("--overlap", type=int, default=64, help="tile overlap in pixels")
    parser.add_argument("--tta", action="store_true", help="average over flips (4x slower)")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=run)


def input_files(path: Path) -> list[Path]:
    from core.datasets.io import IMAGE_SUFFIXES  # here, not at the top: `python -m core --help` stays fast
    from core.errors import UNetLabError

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UNetLabError(f"no PNG, TIFF or JPEG images in {path}")
        return files
    if not path.exists():
        raise UNetLabError(f"input {path} does not exist")
    return [path]


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile
    from PIL import Image
    from tqdm import tqdm

    from core.datasets import read_image
    from core.inference import load_model, predict_image
    from core.postprocess import postprocess

    files = input_files(Path(args.input))
    loaded = load_model(args.checkpoint, device=args.device)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="predicting", unit="image"):
        probability = predict_image(loaded, read_image(path), tile_size=args.tile, overlap=args.overlap,
                                    flip_tta=args.tta, source=str(path)).probability
        labels = postprocess(probability, args.instances, threshold=args.threshold)
        tifffile.imwrite(output / f"{path.stem}_probability.tif", probability.astype(np.float32))
        Image.fromarray(((probability >= args.threshold) * 255).astype(np.uint8)).save(output / f"{path.stem}_mask.png")
        if labels.max() <= np.iinfo(np.uint16).max:
            Image.fromarray(labels.astype(np.uint16)).save(output / f"{path.stem}_labels.png")
        else:
            tifffile.imwrite(output / f"{path.stem}_labels.tif", labels.astype(np.uint32))
        tqdm.write(f"{path.name}: {int(labels.max())} objects, {float((probability >= args.threshold).mean()):.1%} "
                   "of pixels positive")
    print(f"wrote {len(files)} result sets to {output}")
    return 0

