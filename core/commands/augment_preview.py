"""``python -m core augment-preview``: a PNG grid showing what an augmentation level does."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.errors import UNetLabError

# Spelled out here because importing core.augment (albumentations, torch) would slow down
# ``--help``; tests check this list against core.augment.LEVELS.
LEVEL_HELP = "none, light, medium or heavy"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "augment-preview",
        help="save a grid of one image and its augmented versions",
        description="Save a grid of one training image (first tile) and N augmented versions, "
        "each with its mask outlined in yellow, to see what an augmentation level does.",
    )
    parser.add_argument("--dataset", required=True, help="dataset name, e.g. synthetic-nuclei")
    parser.add_argument("--root", type=Path, help="folder of the dataset (not needed for built-in sets)")
    parser.add_argument("--level", required=True, help=f"augmentation level: {LEVEL_HELP}")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--index", type=int, default=0, help="which training image (default: 0)")
    parser.add_argument("--n", type=int, default=8, help="number of augmented versions (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default: 0)")
    parser.add_argument(
        "--patch-size", type=int, default=256, help="side of the centre patch augmented, as in training (default: 256)"
    )
    parser.set_defaults(handler=run_augment_preview)


def run_augment_preview(args: argparse.Namespace) -> int:
    from PIL import Image

    from core.augment import build_augmentation, describe_level, preview_grid
    from core.datasets import load_dataset

    build_augmentation(args.level, args.patch_size)  # unknown level or bad size: fail before loading data
    if args.out.suffix.lower() != ".png":
        raise UNetLabError(f"--out must name a .png file, got {args.out}")
    dataset = load_dataset(args.dataset, root=args.root, split="train")
    if not 0 <= args.index < len(dataset):
        raise UNetLabError(f"--index {args.index} is out of range: {args.dataset} has {len(dataset)} training images")
    item = dataset[args.index]
    grid = preview_grid(
        item.image, item.mask, args.level, n=args.n, seed=args.seed, patch_size=args.patch_size, instances=item.instances
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out)

    print(f"{args.out}: {item.name}, level {args.level!r}, {args.n} augmented versions (seed {args.seed})")
    for line in describe_level(args.level) or ["(no transforms)"]:
        print(f"  {line}")
    return 0
