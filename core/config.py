"""The settings of one training run, shared by the CLI, the registry, the app and studies.

Kept free of torch imports so that the app and the registry can read configs cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError

AUGMENTATION_LEVELS = ("none", "light", "medium", "heavy")
#: Train fractions offered as one-click presets beside the Train page's slider.
TRAIN_FRACTION_PRESETS: tuple[float, ...] = (0.1, 0.2, 0.5, 0.8)
#: Losses on the logits: binary cross-entropy, soft Dice, their sum, and focal loss (gamma 2),
#: each applied to every output channel (see core.train.segmentation_loss).
LOSSES = ("bce", "bce+dice", "dice", "focal")
#: "constant" and "cosine" (annealed per epoch over ``epochs``) are the original schedules; the
#: others change the rate every step over ``epochs * steps_per_epoch`` steps: a linear warm-up
#: over the first 5% then cosine decay, PyTorch's one-cycle, or polynomial decay (power 0.9, as
#: nnU-Net).
LR_SCHEDULES = ("constant", "cosine", "warmup-cosine", "one-cycle", "poly")
#: What the network predicts (core.targets): the foreground mask alone, or the mask plus every
#: object's outline, from which the ``seeded-watershed`` post-processing separates touching objects.
TARGETS = ("mask", "mask+contour")
#: Per-image intensity normalisation before the network (core.preprocess), in training and prediction.
NORMALIZATIONS = ("none", "percentile")
#: Colour handling (core.preprocess): keep the channels, average them to grey, or average to grey and
#: invert images whose background is bright (brightfield), so objects are always brighter than it.
COLOURS = ("keep", "grey", "grey-dark-background")
#: The validation score that picks a run's best epoch (its best.pt) and drives early stopping:
#: the pixel F1 of the foreground, or of the background, which is what counts for EM membranes
#: (ISBI's membranes are the background of its masks), or the objects' DSB mAP, for runs judged on
#: their instances (post-processed as :data:`SELECTION_METHODS` says; costs a post-processing of
#: every validation image after every epoch).
BEST_BY = {
    "val_f1": "validation pixel F1",
    "val_f1_negative": "validation pixel F1 of the background",
    "val_dsb_map": "validation DSB mAP (IoU 0.50 to 0.95, TP/(TP+FP+FN), mean over images)",
}
#: The post-processing that makes a run's objects for ``best_by="val_dsb_map"``, per target.
SELECTION_METHODS = {"mask": "components", "mask+contour": "seeded-watershed"}


def best_epoch(epochs: list[dict[str, Any]], best_by: str = "val_f1") -> dict[str, Any] | None:
    """The stored epoch row a run keeps as ``best.pt``: the first with the highest ``best_by`` score.

    Epoch 0 (the untrained model) is no candidate, a later equal score is no improvement and a
    NaN score (a diverged epoch) never counts. None when no trained epoch has a score yet.
    """
    best = None
    for row in epochs:
        score = row.get(best_by)
        if row["epoch"] >= 1 and score is not None and score > (-math.inf if best is None else best[best_by]):
            best = row
    return best


DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: How the labelled pool is split (core.datasets.split): "auto" = contiguous block with a gap for
#: stacks of slices, whole groups when group_pattern is set, else random; "random" = the only split
#: before stacks were handled, which every run stored without a split_strategy used.
SPLIT_STRATEGIES = ("auto", "random", "block", "groups")



@dataclass
class RunConfig:
    """Everything that defines a training run; JSON-serialisable and stored with the run.

    An *epoch* is ``steps_per_epoch`` optimiser steps on random patches (as nnU-Net does for
    small data), not one pass over the images: with three training images a pass would be a
    single step, and validating after every step would cost more than training.
    """

    dataset: str = "synthetic-nuclei"
    root: str | None = None
    image_size: int | None = None  # resize every image to (image_size, image_size) on load
    train_fraction: float = 0.5
    validation_fraction: float = 0.2
    split_strategy: str = "auto"  # see SPLIT_STRATEGIES; from_dict gives stored runs without it "random"
    group_pattern: str | None = None  # regex on file stems; its first group (or the match) names an image's group
    augmentation: str = "light"
    epochs: int = 10  # with early_stopping_patience: the most epochs a run may train
    steps_per_epoch: int = 25
    # Epochs without an improvement of the validation pixel F1 after which training stops
    # (the best epoch's checkpoint is the run's best.pt either way); None trains all epochs.
    early_stopping_patience: int | None = None
    # No early stop before this epoch: the trust-redo study saw runs stop at epoch 8 after sitting at
    # F1 ~0 (all background) since epoch 2, then learn nothing; 0 = no minimum.
    early_stopping_min_epochs: int = 0
    best_by: str = "val_f1"  # see BEST_BY
    batch_size: int = 8
    patch_size: int = 256
    base_width: int = 16
    depth: int = 4
    loss: str = "bce"
    # Ronneberger et al. 2015's weight map: pixels between two objects weigh up to 1 + border_weight
    # (w0) in the loss, falling off with border_sigma pixels; 0 = no weight map.
    border_weight: float = 0.0
    border_sigma: float = 5.0
    # The same for object pixels where two objects touch with no background between them (DSB
    # nuclei): they weigh up to 1 + touching_weight, falling off with border_sigma; 0 = off.
    touching_weight: float = 0.0
    target: str = "mask"  # see TARGETS
    foreground_sampling: float = 0.0  # share of patches centred on a random foreground pixel
    normalization: str = "none"  # see NORMALIZATIONS
    colour: str = "keep"  # see COLOURS
    # Start from these weights instead of a random initialisation: a run id (its best.pt) or a
    # shipped model's name (core.starter, e.g. "starter-nuclei"); shapes must match.
    init_from: str | None = None
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    # Validate, keep and predict with an exponential moving average of the weights (Polyak
    # averaging) with this decay per step; 0 = the weights as trained. On a few images the
    # validation score jumps from epoch to epoch; the average is smoother and usually better.
    ema_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CPUs with native bf16, fp16 AMP on CUDA
    channels_last: bool = True
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    threshold: float = 0.5
    tile_size: int = 512  # validation and prediction tile
    study: str | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        """Check every setting; raise ConfigError naming the first bad one."""
        checks = [
            # The dataset name becomes part of the run id, a folder name: no path, only a name.
            (
                isinstance(self.dataset, str) and self.dataset[:1].isalnum()
                and all(c.isascii() and (c.isalnum() or c in "._-") for c in self.dataset),
                f"dataset must be a dataset name (see `datasets list`), not a path: got {self.dataset!r}",
            ),
            (0 < self.validation_fraction < 1, "validation_fraction must be in (0, 1)"),
            (
                0 < self.train_fraction <= 1 - self.validation_fraction + 1e-9,
                f"train_fraction must be in (0, {1 - self.validation_fraction:g}] "
                f"(1 - validation_fraction), got {self.train_fraction:g}",
            ),
            (self.augmentation in AUGMENTATION_LEVELS, f"augmentation must be one of {AUGMENTATION_LEVELS}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.best_by in BEST_BY, f"best_by must be one of {tuple(BEST_BY)}, got {self.best_by!r}"),
            (self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}"),
            (self.normalization in NORMALIZATIONS, f"normalization must be one of {NORMALIZATIONS}"),
            (self.colour in COLOURS, f"colour must be one of {COLOURS}, got {self.colour!r}"),
            (0 <= self.border_weight <= 100 and math.isfinite(self.border_weight),
             f"border_weight must be in [0, 100], got {self.border_weight:g}"),
            (0 <= self.touching_weight <= 100 and math.isfinite(self.touching_weight),
             f"touching_weight must be in [0, 100], got {self.touching_weight:g}"),
            (0 < self.border_sigma <= 100, f"border_sigma must be in (0, 100] pixels, got {self.border_sigma:g}"),
            (0 <= self.foreground_sampling <= 1,
             f"foreground_sampling must be in [0, 1], got {self.foreground_sampling:g}"),
            (self.init_from is None or (isinstance(self.init_from, str) and self.init_from.strip() != ""),
             f"init_from must be a run id or a shipped model's name, got {self.init_from!r}"),
            (self.optimizer == "adam", "optimizer must be 'adam'"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.steps_per_epoch >= 1, "steps_per_epoch must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.patch_size >= 16, "patch_size must be at least 16"),
            (self.base_width >= 1, "base_width must be at least 1"),
            (1 <= self.depth <= 6, "depth must be between 1 and 6"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate must be positive"),
            (0 < self.threshold < 1, "threshold must be in (0, 1)"),
            (self.tile_size >= 32, "tile_size must be at least 32"),
            (self.image_size is None or self.image_size >= 16, "image_size must be at least 16"),
            (isinstance(self.seed, int) and self.seed >= 0, f"seed must be 0 or more, got {self.seed}"),
            (self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}"),
            (self.early_stopping_patience is None
             or (isinstance(self.early_stopping_patience, int) and not isinstance(self.early_stopping_patience, bool)
                 and self.early_stopping_patience >= 1),
             f"early_stopping_patience must be at least 1 epoch (or None: no early stopping), "
             f"got {self.early_stopping_patience}"),
            (isinstance(self.early_stopping_min_epochs, int) and self.early_stopping_min_epochs >= 0,
             f"early_stopping_min_epochs must be 0 or more, got {self.early_stopping_min_epochs}"),
            (self.weight_decay >= 0 and math.isfinite(self.weight_decay),
             f"weight_decay must be 0 or more, got {self.weight_decay:g}"),
            (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1,
             f"ema_decay must be at least 0 and below 1 (0 = no averaging), got {self.ema_decay}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid run setting: {message}")
        problem = split_setting_problem(self.split_strategy, self.group_pattern)
        if problem:
            raise ConfigError(f"invalid run setting: {problem}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        """Build from a stored dict; unknown keys (from newer versions) go to ``extra``.

        A dict without ``split_strategy`` was stored before splits knew about stacks and groups,
        when every run was validated on a random split: it loads as ``"random"`` so the run's
        split (and so its validation scores) is reproduced, not re-cut as ``"auto"``.
        """
        if "split_strategy" not in values:
            values = {**values, "split_strategy": "random"}
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.extra.update({k: v for k, v in values.items() if k not in known})
        return config

    @property
    def output_channels(self) -> int:
        """Channels the network predicts: 1 for the mask, 2 for mask and contour."""
        return 2 if self.target == "mask+contour" else 1

    def label(self) -> str:
        """Short human label, e.g. ``synthetic-nuclei 50% light s0``; another tool's model scored
        by ``unetlab evaluate-model`` (``extra["method"]`` ``"external: NAME"``) is named by its
        method, e.g. ``external: cellpose on synthetic-nuclei 50% light s0``."""
        label = f"{self.dataset} {self.train_fraction:.0%} {self.augmentation} s{self.seed}"
        method = str((self.extra or {}).get("method", ""))
        return f"{method} on {label}" if method.startswith("external: ") else label


def split_setting_problem(strategy: Any, group_pattern: Any) -> str | None:
    """What is wrong with a run's ``split_strategy`` / ``group_pattern`` pair, or None."""
    if strategy not in SPLIT_STRATEGIES:
        return f"split_strategy must be one of {SPLIT_STRATEGIES}, got {strategy!r}"
    if group_pattern is None:
        return "split_strategy 'groups' needs a group_pattern" if strategy == "groups" else None
    if not isinstance(group_pattern, str) or not group_pattern:
        return f"group_pattern must be a non-empty regular expression or None, got {group_pattern!r}"
    try:
        re.compile(group_pattern)
    except re.error as error:
        return f"group_pattern {group_pattern!r} is not a valid regular expression: {error}"
    if strategy in ("random", "block"):
        return (f"group_pattern {group_pattern!r} is set but split_strategy is {strategy!r}; "
                "use 'groups' or 'auto' to split by group")
    return None
