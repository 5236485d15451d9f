"""``python -m core datasets list|describe``: the registered datasets and what a loaded one holds."""

from __future__ import annotations

import argparse
import sys
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="list the registered datasets or describe one",
        description="List the registered datasets, or load one and describe it (counts, sizes, "
        "foreground fraction, instances, validations passed).",
    )
    actions = parser.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="registered datasets and the files each expects")
    listing.add_argument("--json", action="store_true", help="print a JSON list of specs")
    listing.set_defaults(handler=run_list)

    describe = actions.add_parser("describe", help="load a dataset and summarise it")
    describe.add_argument("name", help="dataset name (see `datasets list`)")
    describe.add_argument("--root", type=Path, help="dataset folder (not needed for built-in synthetic sets)")
    describe.add_argument("--split", default="train", help="split for the top-level figures (default: train)")
    describe.add_argument("--image-size", "--size", dest="size", type=int,
                          help="resize every image to N x N on load, as `train --image-size N` does")
    describe.add_argument("--no-cache", action="store_true", help="decode the files again, ignoring the cache")
    describe.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    describe.set_defaults(handler=run_describe)


def run_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from core.datasets import list_datasets

    specs = list_datasets()
    if args.json:
        print(json.dumps([asdict(spec) for spec in specs]))
        return 0
    print(f"{'name':<24} {'kind':<9} {'splits':<11} {'positive class':<15} title")
    for spec in specs:
        print(f"{spec.name:<24} {spec.kind:<9} {','.join(spec.splits):<11} {spec.positive_class:<15} {spec.title}")
    print("\nFiles each dataset expects: python -m core datasets describe NAME --root PATH, or see get_spec(NAME).layout")
    return 0


def _format_summary(summary: dict) -> list[str]:
    shapes = ", ".join(f"{h}x{w}" for h, w in summary["shapes"][:6]) + (" ..." if len(summary["shapes"]) > 6 else "")
    lines = [f"{summary['n_images']} images ({shapes}), {summary['channels']} channel(s), {summary['dtype']}"]
    if summary.get("foreground_fraction") is not None:
        lines.append(f"foreground {summary['foreground_fraction']:.1%}")
    else:
        lines.append("unlabelled")
    if summary.get("n_instances") is not None:
        lines.append(f"{summary['n_instances']} instances ({summary['instances_per_image']:g} per image)")
    return lines


def run_describe(args: argparse.Namespace) -> int:
    from core.datasets import describe_dataset

    info = describe_dataset(args.name, root=args.root, size=args.size, split=args.split, use_cache=not args.no_cache)
    if args.json:
        print(json.dumps(info))
        return 0
    size = "native size" if info["size"] is None else f"resized to {info['size'][0]}x{info['size'][1]}"
    print(f"{info['title']} ({info['name']}), {size}")
    print(f"  root: {info['root'] or '(built in)'}; positive class: {info['positive_class']}; kind: {info['kind']}")
    print(f"  loaded in {info['load_seconds']:.2f} s" + (" from the cache" if info["from_cache"] else ""))
    for name, summary in info["splits"].items():
        if summary.get("available") is False:
            print(f"  {name}: not available ({summary['error']})")
        else:
            print(f"  {name}: " + "; ".join(_format_summary(summary)))
    print("  checks passed:")
    for check in info["checks"]:
        print(f"    - {check}")
    for warning in info["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
