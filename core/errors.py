"""Errors U-Net Lab raises on bad input. Each message names the file or value and the problem."""


class UNetLabError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class DatasetError(UNetLabError, ValueError):
    """A dataset is missing, malformed or inconsistent (the message names the file)."""


class CheckpointError(UNetLabError, ValueError):
    """A checkpoint is missing, corrupt, or holds objects we refuse to unpickle."""


class RunError(UNetLabError, ValueError):
    """A run id is unknown, or a run is in a state that does not allow the request."""
