"""One module per command group of ``python -m core``.

Each module defines ``register(subparsers)``, which adds its subcommands and sets
``handler`` (a function taking the parsed arguments and returning an exit code).
"""
