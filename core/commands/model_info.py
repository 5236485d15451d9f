"""``python -m core model-info``: parameter count and forward cost of U-Net configurations."""

from __future__ import annotations

import argparse
import json

DEFAULT_WIDTHS = (16, 32, 64)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "model-info",
        help="parameters and forward GFLOPs of the U-Net",
        description="Parameter count and forward GFLOPs per 256x256 image of U-Net configurations "
        f"(default: widths {', '.join(map(str, DEFAULT_WIDTHS))}).",
    )
    parser.add_argument("--width", type=int, help="base width (channels of the first level); default: a table")
    parser.add_argument("--depth", type=int, default=4, help="number of poolings (default: 4)")
    parser.add_argument("--in-channels", type=int, default=1, help="input image channels (default: 1)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of records instead of a table")
    parser.set_defaults(handler=run_model_info)


def run_model_info(args: argparse.Namespace) -> int:
    from core.model import model_info

    widths = DEFAULT_WIDTHS if args.width is None else (args.width,)
    infos = [model_info(base_width=width, depth=args.depth, in_channels=args.in_channels) for width in widths]
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    print(f"{'width':>5} {'depth':>5} {'in_ch':>5} {'parameters':>12} {'GFLOPs/256²':>12} {'weights MB':>10}")
    for info in infos:
        print(
            f"{info.base_width:>5} {info.depth:>5} {info.in_channels:>5} {info.parameters:>12,} "
            f"{info.gflops_256:>12.2f} {info.weights_mb:>10.1f}"
        )
    return 0
