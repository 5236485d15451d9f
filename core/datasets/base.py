"""The data types every loader shares: Sample, DatasetSpec, Dataset, and what a loader returns.

A loader (one module per source) is a :class:`Source`: ``plan(root, split)`` checks the layout
and lists every file it will read (those files key the cache), and ``read(plan)`` decodes them
into :class:`RawData`, arrays in their native dtype. :class:`Dataset` wraps the RawData and
converts one image to float32 when it is indexed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from core.datasets.io import to_float

#: Values of ``DatasetSpec.ordering``.
ORDERINGS = ("independent", "stack")

#: The one rule by which a binary mask becomes objects, by dataset kind, used by the loaders,
#: ``evaluate``, ``predict``, ``score`` and the pages: separate objects (nuclei, mitochondria)
#: are 8-connected (pixels touching at an edge or a corner are one object); cell interiors
#: of membrane sets are 4-connected, so two cells touching only diagonally across a
#: one-pixel membrane stay two cells (as the ISBI 2012 challenge's Fiji script counts them).
CONNECTIVITY: dict[str, int] = {"objects": 2, "membrane": 1}


def connectivity_for(kind: str) -> int:
    """``skimage.measure.label`` connectivity for a dataset kind (see :data:`CONNECTIVITY`)."""
    if kind not in CONNECTIVITY:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {tuple(CONNECTIVITY)}")
    return CONNECTIVITY[kind]


def display_name(name: str) -> str:
    """A file name that can be shown and stored anywhere: bytes that are not UTF-8 (kept by
    Python as lone surrogates, which a browser page or a JSON file cannot encode) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class Sample:
    """One image with its labels.

    Attributes
    ----------
    image : ndarray, float32, shape (H, W, C), values in [0, 1]; C = 1 grey or 3 colour
    mask : ndarray, bool, shape (H, W), the positive class; None for unlabelled test images
    instances : ndarray, int32, shape (H, W); 0 = background, 1..N objects; None if the source has none
    name : str, e.g. ``"train-volume[07]"``, a DSB id, or a file stem
    """

    image: np.ndarray
    mask: np.ndarray | None
    instances: np.ndarray | None
    name: str


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a named dataset; building one touches no files.

    ``kind`` is ``"membrane"`` (a dense cell-interior/membrane target such as ISBI 2012) or
    ``"objects"`` (separate objects: nuclei, mitochondria). ``"train"`` is always among
    ``splits`` and is the labelled pool that :func:`~core.datasets.split` divides; other splits
    are official held-out sets that are never trained on.

    ``ordering`` is ``"stack"`` when the images are consecutive slices of one volume, in order
    (neighbours are near-duplicates, so validation is a contiguous block with a gap), or
    ``"independent"`` (separately acquired images, split at random).
    """

    name: str
    title: str
    description: str
    positive_class: str
    kind: str
    splits: tuple[str, ...]
    labelled_splits: tuple[str, ...]
    needs_root: bool
    layout: str
    paper_size: tuple[int, int] | None
    ordering: str = "independent"

    @property
    def connectivity(self) -> int:
        """How this dataset's binary masks become objects (see :data:`CONNECTIVITY`)."""
        return connectivity_for(self.kind)

    def __post_init__(self) -> None:
        if self.ordering not in ORDERINGS:
            raise ValueError(f"DatasetSpec {self.name!r}: ordering must be one of {ORDERINGS}, got {self.ordering!r}")


@dataclass
class RawData:
    """Decoded arrays of one split, in their native dtypes (what the cache stores).

    images: (H, W, C) uint8/uint16/float32; masks: bool (H, W) or None for unlabelled splits;
    instances: uint16/int32 (H, W) or None; checks: validations passed, as readable sentences.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    instances: list[np.ndarray] | None
    names: list[str]
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class SourcePlan:
    """What a loader will read: ``files`` (every file, for the cache key) and loader-specific ``items``."""

    files: list[Path]
    items: Any = None


@dataclass(frozen=True)
class Source:
    """A registered dataset: its spec, and the two steps of loading it.

    ``version`` is part of the cache key: bump it when the loader's output changes.
    """

    spec: DatasetSpec
    plan: Callable[[Path | None, str], SourcePlan]
    read: Callable[[SourcePlan], RawData]
    version: int = 1


class Dataset:
    """An ordered, indexable collection of Samples, held in memory.

    Arrays are kept in their native dtype (uint8/uint16, bool masks, uint16 instance ids where
    they fit) and converted to float32/int32 when a sample is indexed, so a 100-slice
    1024x1024 stack does not take four times its size.

    Attributes
    ----------
    spec : DatasetSpec
    root : Path or None
    split_name : str
    size : (height, width) or None (native resolution)
    names : list of str
    channels : int, 1 or 3, the same for every image
    has_masks, has_instances : bool
    checks : list of str, the validations the data passed on load
    warnings : list of str, what loads but deserves a look (see ``core.errors.DatasetWarning``)
    from_cache : bool, True if the arrays came from the decoded-array cache
    """

    def __init__(
        self,
        spec: DatasetSpec,
        root: Path | None,
        split_name: str,
        size: tuple[int, int] | None,
        raw: RawData,
        from_cache: bool = False,
    ):
        self.spec = spec
        self.root = root
        self.split_name = split_name
        self.size = size
        self.names = [display_name(name) for name in raw.names]
        self.checks = list(raw.checks)
        self.warnings = list(raw.warnings)
        self.from_cache = from_cache
        self._images = raw.images
        self._masks = raw.masks
        self._instances = raw.instances
        self.channels = int(raw.images[0].shape[2]) if raw.images else 0

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices are integers, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.spec.name} ({len(self)} images)")
        index = int(index) % len(self)
        return Sample(
            image=to_float(self._images[index]),
            mask=None if self._masks is None else self._masks[index].copy(),  # callers may edit it
            instances=None if self._instances is None else self._instances[index].astype(np.int32),
            name=self.names[index],
        )

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    @property
    def has_masks(self) -> bool:
        return self._masks is not None

    @property
    def has_instances(self) -> bool:
        return self._instances is not None

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Distinct (H, W) image sizes, sorted."""
        return sorted({image.shape[:2] for image in self._images})

    @property
    def pixel_count(self) -> int:
        """Total number of pixels (H * W summed over images)."""
        return sum(image.shape[0] * image.shape[1] for image in self._images)

    @property
    def dtypes(self) -> list[str]:
        """Distinct native image dtypes, e.g. ``["uint8"]``."""
        return sorted({str(image.dtype) for image in self._images})

    def raw_data(self) -> RawData:
        """The arrays as held (native dtypes, not copied), with the checks and warnings: what
        :func:`core.datasets.registry.provided_dataset` hands to another process."""
        return RawData(images=self._images, masks=self._masks, instances=self._instances, names=list(self.names),
                       checks=list(self.checks), warnings=list(self.warnings))

    def raw_masks(self) -> list[np.ndarray] | None:
        """The stored bool masks (no copies); for statistics over the whole set."""
        return self._masks

    def raw_instances(self) -> list[np.ndarray] | None:
        """The stored instance labels in their compact dtype (no copies)."""
        return self._instances

    def __repr__(self) -> str:
        size = "native" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        return f"<Dataset {self.spec.name}/{self.split_name}: {len(self)} images, {self.channels} ch, {size}>"
