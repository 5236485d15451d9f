"""Every error U-Net Lab raises on bad input, in one place.

Each message names the file or value and the problem. The CLI prints any
:class:`UNetLabError` as one line (exit status 2) instead of a traceback; the pages show
it as an error box.
"""


class UNetLabError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(UNetLabError, ValueError):
    """A run setting is out of range; the message names the setting and the allowed values."""


class DatasetError(UNetLabError, ValueError):
    """A dataset is missing, malformed or inconsistent (the message names the file)."""


class AugmentationError(UNetLabError, ValueError):
    """An unknown augmentation level, or arrays that do not fit the augmentation contract."""


class ModelConfigError(UNetLabError, ValueError):
    """A U-Net hyper-parameter or an input tensor does not fit the network."""


class CheckpointError(UNetLabError, ValueError):
    """A checkpoint is missing, corrupt, or holds objects we refuse to unpickle."""


class MetricInputError(UNetLabError, ValueError):
    """An array given to a metric or a post-processing method has the wrong shape, dtype or values."""


class RunError(UNetLabError, ValueError):
    """A run id is unknown, or a run is in a state that does not allow the request."""


class DiskFullError(UNetLabError, OSError):
    """A write failed because the disk (or quota) is full; the message names the folder."""


class RegistryError(RunError):
    """The run registry file is damaged or cannot be opened; the message names the file and what to do."""


class DatasetWarning(UserWarning):
    """Data that loads but deserves a look (all-empty masks, constant images, 1x1 images, files
    skipped, pages read as colour channels); loaders collect them into ``Dataset.warnings``."""


class TrackingWarning(UserWarning):
    """A run could not be mirrored to MLflow (``UNETLAB_MLFLOW_URI``); the run itself is unaffected."""
