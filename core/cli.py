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
from pathlib import Path

import core.commands

from core.errors import UNetLabError


def command_modules() -> list[str]:
    """Names of the modules under ``core/commands``; each adds its own subcommands (a name
    starting with ``_`` is a helper the commands share, with no command of its own)."""
    return sorted(info.name for info in pkgutil.iter_modules(core.commands.__path__) if not info.name.startswith("_"))


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
    except BrokenPipeError:
        # The reader went away (`runs list | head`): nothing is wrong and nothing more is to
        # be said. stdout goes to /dev/null so the interpreter's last flush stays quiet too.
        _silence_stdout()
        return 141  # what a shell reports for a process ended by SIGPIPE
    except Exception as error:  # noqa: BLE001 - the one place that turns a bug into one line
        path = _save_traceback(error)
        first = (str(error).strip().splitlines() or [""])[0][:200]
        print(f"error: unexpected {type(error).__name__}: {first} -- this is a bug in U-Net Lab; "
              f"the traceback is in {path}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _save_traceback(error: BaseException) -> str:
    """Write the traceback of an unexpected error to ``<cache>/logs/crash-*.log``; its path."""
    import os
    import tempfile
    import time
    import traceback

    from core.paths import cache_dir

    text = f"python -m core {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(error))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (lambda: cache_dir() / "logs", lambda: Path(tempfile.gettempdir())):
        try:
            path = folder() / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return str(path)
        except OSError:
            continue
    return "(nowhere: no writable folder; run again with python -X dev for details)"
