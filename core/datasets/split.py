"""Nested train/validation splits of a dataset's labelled "train" pool, without leaks.

Official test splits (ISBI test volume, EPFL testing stack, NCMIR validation/) are other
Datasets and never enter here. Every strategy shares three rules: the validation part is the
same for every training fraction (runs compare on the same images); the training part of a
10% run is a subset of a 20% run's for the same seed (nesting); and ``train_fraction`` is a
share of the whole labelled pool, rounded up (``ceil(train_fraction * n)`` images), capped at
what the strategy leaves for training at the largest fractions (``Split.capped``).

Strategies (``strategy=``, a run's ``split_strategy``):

``"random"`` (independent images: synthetic sets, DSB 2018, folders)
    One fixed permutation per (dataset name, seed, n): validation is its last
    ``max(1, ceil(validation_fraction * n))`` items, training its first ``ceil(train_fraction * n)``.
    This was the only strategy before splits knew about stacks; runs stored then use it.

``"block"`` (ordered slices of one stack: ISBI 2012, ISBI 2013, EPFL, NCMIR)
    Consecutive EM slices a few nanometres apart are near-duplicates, so a random split puts
    each validation slice's neighbours in training (measured: NCMIR validation pixel F1 0.850 on a
    random split vs 0.648 on its held-out images; EPFL 0.927 vs 0.883). Validation is instead
    one contiguous block of ``max(1, ceil(validation_fraction * n))`` slices, and the
    ``gap`` slices on each side of it are used by neither part, so every validation slice is
    more than ``gap`` slices from every training slice.

    *Block position.* The stack is tiled by ``K = n // n_validation`` evenly spaced,
    non-overlapping candidate blocks (the first flush with the stack's start, the last with its
    end; 5 blocks for the default 20%). Seed ``s`` validates on block ``s mod K``, so seeds still
    vary the validation images, and seeds 0..K-1 validate on disjoint blocks that together cover
    the stack, as the folds of a blocked cross-validation do. A fixed block (say the last) would
    make every seed's validation score the same few slices, so the spread over seeds would hide
    how much the score depends on which part of the stack is scored.

    *Gap.* ``DEFAULT_GAP = 2`` slices on each side. Most of the leak in a random split is from
    distance-1 neighbours on both sides of nearly every validation slice; a block leaves only
    its two edge slices near training, and the gap moves their nearest training slice to
    distance 3 (150 nm on ISBI 2012's 50 nm sections). A gap grown with the stack (a share of
    it) would guard only those same two edge slices, a share ``2 / n_validation`` of the block
    that shrinks as the stack grows, while costing twice its width in training slices at the
    largest fraction. Nothing inside one stack is independent of the rest (structures span tens
    of slices on 5 nm FIB-SEM), which is why the official test stacks remain the honest number.
    Changing ``DEFAULT_GAP`` changes the split of every stored stack run: do not.

    *Training* is drawn at random (the seed's permutation) from the slices outside the block
    and its gaps. Its size never depends on which block the seed picked: it is capped at the
    fewest slices any candidate block leaves (``n - n_validation - 2 * gap`` when a block in the
    middle is among the candidates), so at the largest fractions it trains on fewer slices than
    ``ceil(train_fraction * n)``: 20 of ISBI 2012's 30 slices at 0.7 and 0.8, 76 of ISBI 2013's
    100 at 0.8. ``Split.capped`` and the description say so.

``"groups"`` (images that come in groups, e.g. several fields of view of one slide)
    ``group_pattern`` is a regular expression searched in each image's name (a folder's file
    stem): its first capture group, or the whole match when it has none, names the image's
    group. An image whose name the pattern does not match is an error, not a group of its own:
    a mistyped pattern would otherwise silently split the real groups again. Groups are put in
    one fixed permutation per (name, seed, number of groups); validation is whole groups from
    its end until they hold at least ``ceil(validation_fraction * n)`` images (one group is
    always left for training); training is the shortest prefix of the remaining groups that
    holds at least ``ceil(train_fraction * n)`` images (all of them at most), so it nests.

``"auto"`` (the default) is ``"groups"`` when a ``group_pattern`` is given, ``"block"`` for a
dataset whose :class:`~core.datasets.base.DatasetSpec` has ``ordering == "stack"``, else
``"random"``; on independent images it is exactly today's random split.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from core.config import SPLIT_STRATEGIES
from core.errors import DatasetError

if TYPE_CHECKING:
    from core.datasets.base import Dataset

# Fractions such as 0.8 * 30 = 24.000000000000004 must not round up to 25.
_EPSILON = 1e-9
#: Slices left unused on each side of a stack's validation block (see the module docstring).
DEFAULT_GAP = 2
#: What each resolved strategy is called in descriptions.
KIND_NAMES = {"random": "random split", "block": "contiguous block", "groups": "split by group"}


@dataclass(frozen=True)
class Split:
    """Indices into a dataset's "train" split; ``train`` and ``validation`` are disjoint.

    Attributes
    ----------
    train, validation : list of int
        Sorted indices into the pool.
    seed : int
    train_fraction, validation_fraction : float
        As requested; ``len(train)`` can be below ``ceil(train_fraction * n)`` when ``capped``.
    kind : {"random", "block", "groups"}
        The strategy used ("auto" resolved).
    n : int
        Images in the pool.
    gap : int
        ``"block"``: slices left unused on each side of the validation block; else 0.
    block : (int, int) or None
        ``"block"``: (which candidate block, how many candidates), 0-based.
    group_pattern : str or None
        ``"groups"``: the regular expression that named the groups.
    validation_groups, train_groups : tuple of str
        ``"groups"``: the groups in each part, sorted.
    n_groups : int
        ``"groups"``: the number of groups in the pool.
    capped : bool
        True when the strategy left fewer than ``ceil(train_fraction * n)`` images for training.
    """

    train: list[int]
    validation: list[int]
    seed: int
    train_fraction: float
    validation_fraction: float
    kind: str = "random"
    n: int = 0
    gap: int = 0
    block: tuple[int, int] | None = None
    group_pattern: str | None = None
    validation_groups: tuple[str, ...] = ()
    train_groups: tuple[str, ...] = ()
    n_groups: int = 0
    capped: bool = False

    @property
    def description(self) -> str:
        """One sentence (no final full stop) naming the strategy, the validation images and the gap.

        Indices are 0-based positions in the dataset's "train" split (as the pages show them, "#i").
        """
        n_val, n_train = len(self.validation), len(self.train)
        wanted = math.ceil(self.train_fraction * self.n - _EPSILON)
        leaves = {"block": "what the validation block and its gaps leave, the same for every seed",
                  "groups": "all the groups validation leaves"}.get(self.kind, "what validation leaves")
        cap = f"; training is capped at {n_train}, not ceil({self.train_fraction:g} x {self.n}) = {wanted}: {leaves}"
        cap = cap if self.capped else ""
        if self.kind == "block":
            first, last = self.validation[0], self.validation[-1]
            position, count = self.block if self.block is not None else (0, 1)
            unused = [i for i in range(self.n) if i not in self.validation and 0 < _distance(i, first, last) <= self.gap]
            return (
                f"contiguous block with a gap of {self.gap} slices (seed {self.seed} picks block {position + 1} of "
                f"{count}): slices {_ranges(self.validation)} of {self.n} validate, slices {_ranges(unused) or 'none'} "
                f"within {self.gap} of the block are never used, and {n_train} training slices are drawn at random "
                f"from the other {self.n - n_val - len(unused)}{cap}"
            )
        if self.kind == "groups":
            return (
                f"split by group (pattern {self.group_pattern!r}, seed {self.seed}): {len(self.validation_groups)} of "
                f"{self.n_groups} groups validate ({_names(self.validation_groups)}; {n_val} images), and {n_train} "
                f"training images come from {len(self.train_groups)} other whole groups; no group is in both parts, "
                f"no gap{cap}"
            )
        return (
            f"random split (seed {self.seed}): {n_val} of {self.n} images drawn at random validate "
            f"({_ranges(self.validation)}), and {n_train} training images are drawn at random from the other "
            f"{self.n - n_val}; no gap (images are treated as independent){cap}"
        )


def _distance(index: int, first: int, last: int) -> int:
    """Slices between ``index`` and the block ``first..last`` (0 inside it)."""
    return max(first - index, index - last, 0)


def _ranges(indices: Sequence[int], limit: int = 8) -> str:
    """``[2, 5, 6, 7, 9]`` -> ``"#2, #5-#7, #9"``; the first ``limit`` runs, then a count of the rest."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = [f"#{a}" if a == b else f"#{a}-#{b}" for a, b in runs[:limit]]
    if len(runs) > limit:
        text.append(f"and {sum(b - a + 1 for a, b in runs[limit:])} more")
    return ", ".join(text)


def _names(groups: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(group) for group in groups[:limit])
    return shown + (f" and {len(groups) - limit} more" if len(groups) > limit else "")


def permutation(name: str, seed: int, n: int) -> np.ndarray:
    """The fixed order of ``n`` items for (name, seed), identical on every run and machine.

    Seeded from SHA-256 of the name, never Python's per-process randomised ``hash``.
    """
    digest = hashlib.sha256(name.encode()).digest()
    rng = np.random.default_rng(np.random.SeedSequence([int.from_bytes(digest[:8], "little"), int(seed)]))
    return rng.permutation(n)


def group_keys(names: Sequence[str], group_pattern: str) -> list[str]:
    """The group of each image name under ``group_pattern``.

    Parameters
    ----------
    names : sequence of str
        Image names (a folder's file stems).
    group_pattern : str
        Regular expression, searched in each name; its first capture group (or the whole match
        when it has none) is the group.

    Returns
    -------
    list of str, one group name per image.

    Raises
    ------
    DatasetError
        The pattern does not compile, or it matches no (or an empty) group in some names;
        the message lists the first of them.
    """
    try:
        compiled = re.compile(group_pattern)
    except re.error as error:
        raise DatasetError(f"group_pattern {group_pattern!r} is not a valid regular expression: {error}") from None
    keys, unmatched = [], []
    for name in names:
        match = compiled.search(name)
        key = None if match is None else (match.group(1) if compiled.groups and match.group(1) is not None
                                          else match.group(0))
        if not key:
            unmatched.append(name)
        keys.append(key or "")
    if unmatched:
        shown = ", ".join(repr(name) for name in unmatched[:5]) + (f" and {len(unmatched) - 5} more"
                                                                   if len(unmatched) > 5 else "")
        raise DatasetError(
            f"group_pattern {group_pattern!r} finds no group in {len(unmatched)} of {len(names)} image names "
            f"({shown}); every image needs a group, or images of one group could land in both parts"
        )
    return keys


def resolve_strategy(strategy: str, ordering: str, group_pattern: str | None) -> str:
    """``"auto"`` -> ``"groups"`` / ``"block"`` / ``"random"``; checks that the settings agree."""
    if strategy not in SPLIT_STRATEGIES:
        raise DatasetError(f"unknown split strategy {strategy!r}; choose from {', '.join(SPLIT_STRATEGIES)}")
    if strategy == "groups" and not group_pattern:
        raise DatasetError("split strategy 'groups' needs a group_pattern naming each image's group")
    if group_pattern and strategy in ("random", "block"):
        raise DatasetError(f"group_pattern {group_pattern!r} is given but the split strategy is {strategy!r}; "
                           "use 'groups' or 'auto' to split by group")
    if strategy != "auto":
        return strategy
    if group_pattern:
        return "groups"
    return "block" if ordering == "stack" else "random"


def split(
    dataset: Dataset | str,
    train_fraction: float,
    seed: int = 0,
    validation_fraction: float = 0.2,
    n: int | None = None,
    *,
    strategy: str = "auto",
    group_pattern: str | None = None,
    names: Sequence[str] | None = None,
    gap: int = DEFAULT_GAP,
) -> Split:
    """Split the labelled pool into training and validation indices (see the module docstring).

    Parameters
    ----------
    dataset : Dataset or str
        A loaded "train" split, or a dataset name together with ``n``. A registered name
        (e.g. ``"isbi2012"``) brings its spec's ``ordering``; other names are independent images.
    train_fraction : float
        Share of the pool used for training, in (0, 1 - validation_fraction].
    seed : int
        Chooses the permutation, and for stacks the validation block.
    validation_fraction : float
        Share kept for validation, in (0, 1); at least one image.
    n : int, optional
        Number of images; required when ``dataset`` is a name.
    strategy : {"auto", "random", "block", "groups"}
        A run's ``split_strategy``.
    group_pattern : str, optional
        A run's ``group_pattern``: regular expression naming each image's group.
    names : sequence of str, optional
        Image names, for ``group_pattern`` when ``dataset`` is a name (a Dataset has its own).
    gap : int
        ``"block"``: slices left unused on each side of the validation block.

    Returns
    -------
    Split
        ``train`` and ``validation``, sorted and disjoint; ``description`` says how they were cut.

    Raises
    ------
    DatasetError
        Bad fractions, strategy or pattern, a non-"train" split, or too few images (slices,
        groups) for both parts.
    """
    ordering = "independent"
    if isinstance(dataset, str):
        name = dataset
        if n is None:
            raise DatasetError("split() of a dataset name needs n, the number of images")
        from core.datasets.registry import SOURCES  # here: the registry imports every loader

        if name in SOURCES:
            ordering = SOURCES[name].spec.ordering
    else:
        name = dataset.spec.name
        ordering = dataset.spec.ordering
        if dataset.split_name != "train":
            raise DatasetError(
                f"split() divides the labelled 'train' pool; {name}/{dataset.split_name} is an official "
                "held-out split and is never trained on"
            )
        if n is not None and n != len(dataset):
            raise DatasetError(f"n={n} but {name} has {len(dataset)} images")
        n = len(dataset)
        names = dataset.names
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DatasetError(f"n must be a non-negative integer, got {n!r}")
    n = int(n)
    if not 0.0 < validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    largest = 1.0 - validation_fraction
    if not 0.0 < train_fraction <= largest + _EPSILON:
        raise DatasetError(
            f"train_fraction must be in (0, {largest:g}] (1 - validation_fraction), got {train_fraction!r}"
        )
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise DatasetError(f"gap must be a non-negative number of slices, got {gap!r}")
    kind = resolve_strategy(strategy, ordering, group_pattern)
    n_validation = max(1, math.ceil(validation_fraction * n - _EPSILON))
    wanted = math.ceil(train_fraction * n - _EPSILON)
    common = dict(seed=int(seed), train_fraction=float(train_fraction),
                  validation_fraction=float(validation_fraction), n=n)
    if kind == "groups":
        if names is None:
            raise DatasetError("split by group of a dataset name needs names, one per image")
        if len(names) != n:
            raise DatasetError(f"{len(names)} names for {n} images")
        return _split_groups(name, list(names), str(group_pattern), n_validation, wanted, common)
    if kind == "block":
        return _split_block(name, n, int(gap), n_validation, wanted, common)
    # At the largest train fraction, rounding both parts up could overlap (n=24, 0.8 + 0.2 gives
    # 20 + 5): training takes what validation leaves. Capping keeps the nesting.
    n_train = min(wanted, n - n_validation)
    if n_train < 1:
        raise DatasetError(
            f"{name} has {n} labelled images: too few for {n_train} training and {n_validation} validation "
            f"images (train_fraction {train_fraction:g}, validation_fraction {validation_fraction:g})"
        )
    order = permutation(name, seed, n)
    return Split(
        train=sorted(int(i) for i in order[:n_train]),
        validation=sorted(int(i) for i in order[n - n_validation:]),
        kind="random",
        capped=n_train < wanted,
        **common,
    )


def block_starts(n: int, n_validation: int) -> list[int]:
    """First slice of each candidate validation block: ``n // n_validation`` evenly spaced blocks.

    The first starts at 0 and the last ends at ``n``; they never overlap (spacing >= n_validation).
    """
    count = max(1, n // n_validation)
    if count == 1:
        return [n - n_validation]
    # floor(x + 0.5), not round(): Python rounds halves to even, which is harder to state.
    return [int(math.floor(k * (n - n_validation) / (count - 1) + 0.5)) for k in range(count)]


def _split_block(name: str, n: int, gap: int, n_validation: int, wanted: int, common: dict) -> Split:
    starts = block_starts(n, n_validation)

    def outside(start: int) -> list[int]:
        """Slices more than ``gap`` from the block starting at ``start``: the ones training may use."""
        return [i for i in range(n) if i < start - gap or i >= start + n_validation + gap]

    # The training size must not depend on which block the seed picked: cap it at the fewest
    # slices any candidate leaves (a middle block loses a gap on both sides, an end block one).
    available = min(len(outside(start)) for start in starts)
    if available < 1:
        raise DatasetError(
            f"{name} has {n} slices: too few for a contiguous validation block of {n_validation} slices with a gap "
            f"of {gap} slices on each side and at least one training slice; lower validation_fraction, or use "
            "split_strategy 'random' (which leaks between neighbouring slices)"
        )
    position = int(common["seed"]) % len(starts)
    start = starts[position]
    allowed = set(outside(start))
    n_train = min(wanted, available)
    order = [int(i) for i in permutation(name, common["seed"], n) if int(i) in allowed]
    return Split(
        train=sorted(order[:n_train]),
        validation=list(range(start, start + n_validation)),
        kind="block",
        gap=gap,
        block=(position, len(starts)),
        capped=n_train < wanted,
        **common,
    )


def _split_groups(name: str, names: list[str], group_pattern: str, n_validation: int, wanted: int,
                  common: dict) -> Split:
    keys = group_keys(names, group_pattern)
    groups = sorted(set(keys))  # sorted: the permutation must not depend on file order
    if len(groups) < 2:
        raise DatasetError(
            f"group_pattern {group_pattern!r} puts all {len(names)} images of {name} in "
            f"{'one group' if groups else 'no group'} ({_names(groups)}); splitting by group needs at least two"
        )
    members: dict[str, list[int]] = {group: [] for group in groups}
    for index, key in enumerate(keys):
        members[key].append(index)
    order = [groups[int(i)] for i in permutation(name, common["seed"], len(groups))]
    validation_groups: list[str] = []
    count = 0
    for group in reversed(order):
        # Whole groups until validation holds its share; one group always stays for training.
        if count >= n_validation or len(validation_groups) == len(groups) - 1:
            break
        validation_groups.append(group)
        count += len(members[group])
    remaining = order[: len(groups) - len(validation_groups)]
    train_groups: list[str] = []
    count = 0
    for group in remaining:
        # The shortest prefix reaching the target: a larger fraction extends it, so runs nest.
        if count >= wanted:
            break
        train_groups.append(group)
        count += len(members[group])
    return Split(
        train=sorted(i for group in train_groups for i in members[group]),
        validation=sorted(i for group in validation_groups for i in members[group]),
        kind="groups",
        group_pattern=group_pattern,
        validation_groups=tuple(sorted(validation_groups)),
        train_groups=tuple(sorted(train_groups)),
        n_groups=len(groups),
        capped=count < wanted,
        **common,
    )
