"""`python -m core COMMAND ...`: the command-line entry for everything."""

from core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m core"))
