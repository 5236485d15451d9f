"""Argument parsing for ``python -m core``.

Each command group lives in its own module under ``core/commands`` with a
``register(subparsers)`` function; heavy imports (torch) happen inside the handlers so
that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import core.commands

from core.errors import UNetLabError


def command_modules() -> list[str]:
    """Names of the modules under ``core/commands``; each adds its own subcommands."""
    return sorted(info.name for info in pkgutil.iter_modules(core.commands.__path__))


def build_parser(prog: str = "unetlab") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="U-Net Lab: small-data biomedical segmentation studies.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(f"core.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None, prog: str = "unetlab") -> int:
    """Run one command; ``unetlab`` and ``python -m core`` both end here."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UNetLabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
