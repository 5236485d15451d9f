"""Training one U-Net run, top to bottom.

``train_run(config)`` loads the dataset, splits it, trains for ``config.epochs`` epochs of
``config.steps_per_epoch`` steps on random augmented patches, validates on the fixed
validation part after every epoch, and writes ``last.pt`` (every epoch) and ``best.pt``
(the epoch with the best validation pixel F1 of the foreground or, with ``config.best_by``, of
the background, or the best DSB mAP of the objects) under ``checkpoints/<run id>/``. With
``config.ema_decay`` the weights validated and saved are a moving average of the trained ones. With
``config.early_stopping_patience`` P, training stops after the first epoch that ends P
epochs without an improvement of that score (``config.epochs`` is then the
most it trains); the reason is stored with that epoch (``note``) and in the run's progress.
Progress and per-epoch metrics go to the run registry as they happen, so the app can follow
a run from another process.

Reproducibility: every source of randomness of epoch ``e`` (patch positions, augmentation,
torch) is seeded from ``(config.seed, e)``. A run resumed from ``last.pt`` after epoch
``e`` therefore replays epochs ``e+1...`` exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
import queue
import sys
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from core.augment import augment, build_augmentation
from core.checkpoints import check_weights_fit, load_checkpoint, save_checkpoint
from core.config import BEST_BY, SELECTION_METHODS, RunConfig, best_epoch as best_epoch_row
from core.datasets import Dataset, load_dataset, split
from core.errors import CheckpointError, ConfigError, RunError
from core.model import UNet
from core.inference import LoadedModel, memory_format as model_memory_format, predict_image, resolve_device, resolve_precision
from core.predict import autocast_context
from core.preprocess import input_channels, is_identity, preprocess
from core.runs import Registry, check_run_id, failure_cause
from core.targets import border_weight_map, instances_or_components, target_channels


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    run_id: str
    status: str
    epochs_done: int
    best_epoch: int | None
    #: The best epoch's ``best_by`` score (see ``core.config.BEST_BY``): a validation pixel F1 but
    #: for ``best_by="val_dsb_map"``, where it is that DSB mAP (the name is the default's).
    best_validation_f1: float | None
    final_metrics: dict[str, float]
    untrained_metrics: dict[str, float]
    seconds: float
    checkpoint_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Why training stopped before ``config.epochs`` (early stopping), e.g. "stopped early at
    #: epoch 14: no improvement of the validation pixel F1 for 5 epochs (best epoch 9)"; None otherwise.
    stop_reason: str | None = None
    best_by: str = "val_f1"

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "epochs_done": self.epochs_done,
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "best_epoch": self.best_epoch,
            "best_validation_f1": self.best_validation_f1,
            "best_by": self.best_by,
            "validation": self.final_metrics,
            "untrained_validation": self.untrained_metrics,
            "seconds": round(self.seconds, 2),
            "checkpoint_dir": self.checkpoint_dir,
        }


# ---- data -------------------------------------------------------------------------------


def patch_shape(dataset: Dataset, indices: list[int], patch_size: int) -> tuple[int, int]:
    """Patch (height, width): ``patch_size``, shrunk to the smallest training image."""
    heights = [dataset[i].image.shape[0] for i in indices]
    widths = [dataset[i].image.shape[1] for i in indices]
    return min(patch_size, *heights), min(patch_size, *widths)


def epoch_seed(seed: int, epoch: int) -> int:
    """One integer seed per (run seed, epoch), different for every pair."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def needs_instances(config: RunConfig) -> bool:
    """Whether a run's patches must carry instance labels (for contours or border weights)."""
    return config.target != "mask" or config.border_weight > 0 or config.touching_weight > 0


def patch_corner(rng: np.random.Generator, shape: tuple[int, int], patch: tuple[int, int],
                 foreground: np.ndarray | None, foreground_sampling: float) -> tuple[int, int]:
    """(top, left) of a random patch; with probability ``foreground_sampling`` one centred
    (as far as the image allows) on a random foreground pixel (``foreground``: flat indices)."""
    height, width = shape
    patch_h, patch_w = patch
    # Draw only when sampling is on, so runs without it keep their random stream.
    if foreground_sampling > 0 and rng.random() < foreground_sampling and foreground is not None and foreground.size:
        row, col = divmod(int(foreground[rng.integers(foreground.size)]), width)
        top = min(max(row - patch_h // 2, 0), height - patch_h)
        left = min(max(col - patch_w // 2, 0), width - patch_w)
        return top, left
    return int(rng.integers(height - patch_h + 1)), int(rng.integers(width - patch_w + 1))


def patch_batches(
    data: "TrainingData",
    config: RunConfig,
    epoch: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``steps_per_epoch`` batches of random augmented patches for one epoch.

    Each item: images float32 (B, C, h, w), targets float32 (B, K, h, w) (K from the run's
    ``target``: see :func:`core.targets.target_channels`) and pixel weights float32
    (B, 1, h, w) when ``border_weight`` or ``touching_weight`` is set, else None.
    """
    rng = np.random.default_rng(epoch_seed(config.seed, epoch))
    shape = data.patch_shape
    transform = build_augmentation(config.augmentation, max(shape), seed=epoch_seed(config.seed + 1, epoch))
    patch_h, patch_w = shape
    with_instances = needs_instances(config)
    for _ in range(config.steps_per_epoch):
        batch_images, batch_targets, batch_weights = [], [], []
        for _ in range(config.batch_size):
            index = int(rng.integers(len(data.train_images)))
            image, mask = data.train_images[index], data.train_masks[index]
            top, left = patch_corner(rng, mask.shape, shape, data.train_foreground[index],
                                     config.foreground_sampling)
            window = (slice(top, top + patch_h), slice(left, left + patch_w))
            image, mask = image[window], mask[window]
            instances = data.train_instances[index][window] if with_instances else None
            if transform is not None:
                image, mask, instances = augment(transform, image, mask, instances)
            batch_images.append(image.transpose(2, 0, 1))
            batch_targets.append(target_channels(mask, instances, config.target))
            if config.border_weight > 0 or config.touching_weight > 0:
                batch_weights.append(border_weight_map(instances, config.border_weight, config.border_sigma,
                                                       config.touching_weight)[None])
        yield (np.stack(batch_images).astype(np.float32), np.stack(batch_targets),
               np.stack(batch_weights) if batch_weights else None)


def prefetch(iterator: Iterator, depth: int = 3) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead.

    Patch cutting and augmentation (OpenCV, which releases the GIL) then overlap with the
    training step. One producer keeps the order, so results stay deterministic.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as error:  # re-raised in the consumer
            items.put(error)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ---- loss and validation ----------------------------------------------------------------


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, loss: str,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """The run's loss on logits, averaged over the output channels.

    Parameters
    ----------
    logits, target : tensors (B, K, h, w); target values 0 or 1
    loss : "bce" (binary cross-entropy), "dice" (soft Dice, 1 - Dice per channel), "bce+dice"
        (their sum) or "focal" (Lin et al. 2017, gamma 2: cross-entropy scaled by
        ``(1 - p_t)**2``, so pixels already right count less)
    weights : tensor (B, 1, h, w), optional
        Pixel weights (the border weight map) on the cross-entropy or focal term.
    """
    value = logits.new_zeros(())
    if loss in ("bce", "bce+dice"):
        if weights is None:
            value = F.binary_cross_entropy_with_logits(logits, target)
        else:
            value = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weights).mean()
    elif loss == "focal":
        cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        probability = torch.sigmoid(logits)
        p_t = probability * target + (1 - probability) * (1 - target)
        focal = cross_entropy * (1 - p_t) ** 2
        value = (focal if weights is None else focal * weights).mean()
    if loss in ("dice", "bce+dice"):
        probability = torch.sigmoid(logits)
        dims = (0, 2, 3)
        intersection = (probability * target).sum(dims)
        dice = (2 * intersection + 1) / (probability.sum(dims) + target.sum(dims) + 1)
        value = value + (1 - dice).mean()
    return value


def validate(
    model: torch.nn.Module,
    dataset: Dataset,
    indices: list[int],
    config: RunConfig,
    device: torch.device,
    precision: str,
) -> dict[str, float]:
    """Whole-image (tiled) validation: loss and pixel scores of both classes at the threshold.

    Pixel scores are micro-averaged: TP/FP/FN/TN are summed over all validation pixels first.
    With ``config.best_by == "val_dsb_map"`` also ``val_dsb_map``: the DSB mAP of the objects that
    ``SELECTION_METHODS[config.target]`` makes, averaged over the images as the evaluation does.
    """
    from core.metrics import PixelCounts, instance_scores, pixel_counts
    from core.postprocess import binary_to_instances, postprocess

    # The network's own input channels: a colour dataset trained in grey (config.colour) has 1.
    loaded = LoadedModel(model=model, config=config, channels=getattr(model, "in_channels", dataset.channels),
                         epoch=0, device=device, precision=precision)
    counts = PixelCounts()
    loss_sum, pixel_count = 0.0, 0
    object_maps = []  # per image, with best_by="val_dsb_map"
    connectivity = dataset.spec.connectivity
    for index in indices:
        sample = dataset[index]
        prediction = predict_image(loaded, sample.image)
        probability = prediction.probability
        clipped = np.clip(probability, 1e-6, 1 - 1e-6)
        truth = sample.mask
        loss_sum += float(-(np.log(clipped[truth]).sum() + np.log(1 - clipped[~truth]).sum()))
        pixel_count += truth.size
        counts = counts + pixel_counts(probability, truth, config.threshold)
        if config.best_by == "val_dsb_map":  # the truth's objects and ours, as core.evaluate makes them
            truth_labels = (sample.instances if sample.instances is not None
                            else binary_to_instances(truth, connectivity=connectivity))
            labels = postprocess(probability, SELECTION_METHODS[config.target], contour=prediction.contour,
                                 threshold=config.threshold, connectivity=connectivity)
            object_maps.append(instance_scores(truth_labels, labels).dsb_map)
    metrics = {
        "val_loss": loss_sum / pixel_count,
        "val_f1": counts.f1,
        "val_precision": counts.precision,
        "val_recall": counts.recall,
        "val_iou": counts.iou,
        "val_f1_negative": counts.negative_f1,
        "val_tp": int(counts.tp),
        "val_fp": int(counts.fp),
        "val_fn": int(counts.fn),
        "val_tn": int(counts.tn),
    }
    if object_maps:
        metrics["val_dsb_map"] = float(np.mean(object_maps))
    return metrics


# ---- early stopping --------------------------------------------------------------------


def early_stopping(epochs: list[dict[str, Any]], patience: int | None,
                   min_epochs: int = 0, best_by: str = "val_f1") -> tuple[int | None, str | None]:
    """The best epoch so far and, when training should stop now, why.

    Parameters
    ----------
    epochs : the run's stored per-epoch metrics (``Registry.epochs``: epoch 0 is the untrained
        model and is not a candidate), in epoch order
    patience : ``config.early_stopping_patience``; None never stops early
    min_epochs : ``config.early_stopping_min_epochs``; never stop before this epoch (a network that
        starts by predicting all background can sit at F1 0 for several epochs before it learns)
    best_by : ``config.best_by``, the stored validation score that decides (see ``BEST_BY``)

    Returns
    -------
    (best epoch, reason)
        The best epoch is the first with the highest ``best_by`` score, as ``best.pt`` is chosen
        (a later equal score is no improvement). ``reason`` is a sentence when the last stored
        epoch is ``patience`` or more epochs after the best one, else None. Derived from the
        stored metrics alone, so a resumed run (which reloads them) decides exactly as an
        uninterrupted one.
    """
    best = best_epoch_row(epochs, best_by)
    best_epoch = None if best is None else best["epoch"]
    last = max([row["epoch"] for row in epochs if row["epoch"] >= 1], default=0)
    if patience is None or last == 0 or last < min_epochs:
        return best_epoch, None
    since = last - (best_epoch or 0)
    if since < patience:
        return best_epoch, None
    return best_epoch, (f"stopped early at epoch {last}: no improvement of the {BEST_BY[best_by]} for "
                        f"{since} epoch{'' if since == 1 else 's'} (best epoch {best_epoch}, patience {patience})")


# ---- stopping on request ---------------------------------------------------------------


class StopRequest:
    """Set by SIGTERM (or the caller); the loop checks it after every step."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, *_: Any) -> None:
        self.requested = True

    def install(self) -> Callable[[], None]:
        """Handle SIGTERM while training; returns a function restoring the old handler."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.signal(signal.SIGTERM, self)
        return lambda: signal.signal(signal.SIGTERM, previous)


# ---- the run ---------------------------------------------------------------------------


def train_run(
    config: RunConfig | None = None,
    run_id: str | None = None,
    registry: Registry | None = None,
    show_progress: bool = True,
    stop: StopRequest | None = None,
    then_evaluate: bool = False,
    from_worker: bool = False,
) -> TrainResult:
    """Train a new run from ``config``, or continue the existing run ``run_id``.

    With ``run_id`` the stored config is used and training continues from the run's
    ``last.pt`` when there is one (resume), else starts from scratch (a queued run). The
    run is claimed first (:meth:`Registry.claim`): one that another live process trains
    is refused with a RunError naming that process.

    When training completes the run becomes ``finished`` (``evaluating`` with
    ``then_evaluate``: the caller evaluates it, see :mod:`core.lifecycle`), but only if its
    ``best.pt`` exists; otherwise it is marked failed and RunError is raised. Any error
    is recorded as the run's cause of failure and raised.
    """
    registry = registry or Registry()
    if run_id is None:
        if config is None:
            raise RunError("train_run needs a config or a run id")
        run_id = registry.create_run(config, status="running")  # owned by this process
    else:
        check_run_id(run_id)  # before anything is claimed, built or written under the id
        config = registry.claim(run_id, from_worker=from_worker).config

    stop = stop or StopRequest()
    restore_handler = stop.install()
    started = time.time()
    try:
        config.validate()
        result = _train(config, run_id, registry, show_progress, stop, started)
    except KeyboardInterrupt:
        registry.end_attempt(run_id, "cancelled", error="interrupted (Ctrl-C)")
        raise
    except BaseException as error:
        registry.end_attempt(run_id, "failed", error=failure_cause(error))
        raise
    finally:
        restore_handler()
    if result.status == "cancelled":
        registry.end_attempt(run_id, "cancelled", error="stopped on request")
    else:
        registry.finish_training(run_id, then_evaluate=then_evaluate)
    return result


@dataclass
class TrainingData:
    """The images a run trains on, and the validation part it is scored on after every epoch."""

    dataset: Dataset
    train_indices: list[int]
    validation_indices: list[int]
    patch_shape: tuple[int, int]
    train_images: list[np.ndarray]  # preprocessed as the run says (core.preprocess)
    train_masks: list[np.ndarray]
    #: Instance labels per training image (the mask's components where the source has none);
    #: None entries when the run's target and loss do not need them.
    train_instances: list[np.ndarray | None] = field(default_factory=list)
    #: Flat indices of each training image's foreground pixels, for foreground-aware patch
    #: sampling; None entries when the run does not sample so.
    train_foreground: list[np.ndarray | None] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        """Channels the network gets (grey after a colour setting other than "keep")."""
        return self.train_images[0].shape[2] if self.train_images else self.dataset.channels


def prepare_data(config: RunConfig) -> TrainingData:
    """Load the dataset at the run's image size, cut its fixed split and prepare the training images."""
    from core.datasets.base import connectivity_for

    dataset = load_dataset(config.dataset, config.root, split="train", size=config.image_size)
    parts = split(dataset, config.train_fraction, config.seed, config.validation_fraction,
                  strategy=config.split_strategy, group_pattern=config.group_pattern)
    samples = [dataset[i] for i in parts.train]
    images = [sample.image for sample in samples]
    if not is_identity(config.normalization, config.colour):
        images = [preprocess(image, config.normalization, config.colour) for image in images]
    connectivity = connectivity_for(dataset.spec.kind)
    return TrainingData(
        dataset=dataset,
        train_indices=list(parts.train),
        validation_indices=list(parts.validation),
        patch_shape=patch_shape(dataset, parts.train, config.patch_size),
        train_images=images,
        train_masks=[sample.mask for sample in samples],
        train_instances=[instances_or_components(sample.mask, sample.instances, connectivity)
                         if needs_instances(config) else None for sample in samples],
        train_foreground=[np.flatnonzero(sample.mask) if config.foreground_sampling > 0 else None
                          for sample in samples],
    )


@dataclass
class Trainer:
    """The model and everything that updates it; ``last.pt`` holds its state after each epoch."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    memory_format: torch.memory_format
    #: The moving average of the weights (``config.ema_decay`` > 0), else None.
    average: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights validated, saved as the checkpoint's ``state_dict`` and predicted with."""
        return self.model if self.average is None else self.average.module


def moving_average(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and batch-norm statistics.

    The decay grows from 0.1 to ``decay`` over the first steps, ``min(decay, (1 + n) / (10 + n))``
    after n updates, so the average forgets the random initial weights within a few dozen steps
    however long its horizon ``1 / (1 - decay)`` is. Integer buffers (batch counts) follow the model.
    """
    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():
            return current
        step_decay = min(decay, (1 + float(updates)) / (10 + float(updates)))
        return averaged + (current - averaged) * (1 - step_decay)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)


#: Schedules that change the learning rate after every optimiser step (the others: every epoch).
PER_STEP_SCHEDULES = ("warmup-cosine", "one-cycle", "poly")
#: Share of a run's steps spent warming the learning rate up linearly in "warmup-cosine".
WARMUP_SHARE = 0.05


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning rate's multiplier after ``step`` optimiser steps of ``total_steps`` for the
    per-step schedules "warmup-cosine" and "poly" (one-cycle is PyTorch's ``OneCycleLR``)."""
    if schedule == "poly":
        return max(0.0, 1 - step / total_steps) ** 0.9
    warmup = max(1, int(WARMUP_SHARE * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> Any:
    """The run's learning-rate schedule (see :data:`core.config.LR_SCHEDULES`)."""
    total = config.epochs * config.steps_per_epoch
    schedule = config.lr_schedule
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if schedule == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=total + 1)
    if schedule in ("warmup-cosine", "poly"):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def init_source(init_from: str, registry: Registry) -> Path:
    """The checkpoint a run's ``init_from`` names: a run's ``best.pt`` or a shipped model's file.

    Raises
    ------
    ConfigError
        When no run or shipped model has that name, or the run has no best checkpoint yet.
    """
    from core.starter import find_starter, starter_models

    name = init_from.removeprefix("starter:")
    starter = find_starter(name)
    if starter is not None:
        return starter.checkpoint
    try:
        record = registry.get_run(init_from)
    except RunError:
        record = None
    if record is None:
        shipped = ", ".join(model.name for model in starter_models()) or "none"
        raise ConfigError(f"--init-from {init_from!r}: no run with that id and no shipped model of that name "
                          f"(shipped: {shipped}; runs: `runs list`)")
    if not record.best_checkpoint.is_file():
        raise ConfigError(f"--init-from {init_from!r}: the run has no best checkpoint yet (status {record.status})")
    return record.best_checkpoint


def check_init_from(config: RunConfig, registry: Registry | None = None) -> Path | None:
    """Check before a run is created that its ``init_from`` weights can fit its network.

    Compares the source's stored width, depth and outputs with the run's (the input channels
    are compared when the weights are loaded, once the dataset is read). Returns the source
    checkpoint, or None without ``init_from``.

    Raises
    ------
    ConfigError
        Naming the setting that differs, e.g. "width 8 ... this run's width is 16".
    """
    from core.checkpoints import checkpoint_config, load_checkpoint

    if config.init_from is None:
        return None
    path = init_source(config.init_from, registry or Registry())
    try:
        source, _ = checkpoint_config(load_checkpoint(path), path)
    except CheckpointError as error:
        raise ConfigError(f"--init-from {config.init_from!r}: {error}") from None
    for name, label in (("base_width", "width"), ("depth", "depth"), ("output_channels", "output channels")):
        theirs, ours = getattr(source, name), getattr(config, name)
        if theirs != ours:
            raise ConfigError(f"--init-from {config.init_from!r}: its weights are of a U-Net with {label} {theirs}; "
                              f"this run's {label} is {ours}. Use the same --width/--depth/--target to fine-tune it.")
    return path


def adapt_input_channels(state_dict: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Weights of a colour model for a grey one, or the reverse, computing the same function.

    Prediction feeds a grey image to a colour model by repeating it (core.predict.match_channels),
    which a first convolution sees as its weights summed over the three input channels; and a
    colour image to a grey model by the channel mean, which is the grey weights divided by three
    on each channel. Only the first convolution's input axis changes; any other difference is
    left for :func:`core.checkpoints.check_weights_fit` to report.
    """
    expected = model.state_dict()
    adapted = dict(state_dict)
    for name, tensor in state_dict.items():
        want = expected.get(name)
        if not isinstance(tensor, torch.Tensor) or want is None or tensor.ndim != 4 or tensor.shape == want.shape:
            continue
        if tensor.shape[0] == want.shape[0] and tensor.shape[2:] == want.shape[2:]:
            if (tensor.shape[1], want.shape[1]) == (3, 1):
                adapted[name] = tensor.sum(dim=1, keepdim=True)
            elif (tensor.shape[1], want.shape[1]) == (1, 3):
                adapted[name] = tensor.repeat(1, 3, 1, 1) / 3
    return adapted


def build_trainer(config: RunConfig, in_channels: int, registry: Registry | None = None) -> Trainer:
    """A U-Net, initialised at random (seeded by the run's seed) or from ``init_from``'s weights,
    with Adam and the LR schedule.

    Raises
    ------
    ConfigError
        When ``init_from``'s weights do not fit (another width, depth or channels).
    """
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    memory_format = model_memory_format(config, device)
    model = UNet(in_channels=in_channels, base_width=config.base_width, depth=config.depth,
                 out_channels=config.output_channels)
    if config.init_from is not None:
        path = check_init_from(config, registry)
        try:
            weights = adapt_input_channels(load_checkpoint(path)["state_dict"], model)
            check_weights_fit(model, weights, path)
        except CheckpointError as error:
            raise ConfigError(f"--init-from {config.init_from!r}: {error}") from None
        model.load_state_dict(weights)
    model = model.to(device).to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    average = moving_average(model, config.ema_decay) if config.ema_decay > 0 else None
    return Trainer(model, optimizer, build_scheduler(optimizer, config), scaler, device, precision, memory_format,
                   average)


@dataclass
class Progress:
    """Where a run stands between epochs: what a resumed run continues from."""

    start_epoch: int = 1
    best_score: float = -1.0  # the best epoch's config.best_by score
    best_epoch: int | None = None
    untrained: dict[str, float] = field(default_factory=dict)


def resume_or_start(trainer: Trainer, data: TrainingData, config: RunConfig, run_id: str,
                    registry: Registry, last_path) -> Progress:
    """Continue from ``last.pt`` when it exists; else score the untrained model as epoch 0."""
    if last_path.exists():
        state = load_checkpoint(last_path, map_location=trainer.device)
        check_weights_fit(trainer.model, state["state_dict"], last_path)  # e.g. a last.pt of another width
        # With weight averaging, state_dict is the average and training_state_dict the weights as trained.
        trainer.model.load_state_dict(state.get("training_state_dict", state["state_dict"]))
        if trainer.average is not None:
            trainer.average.module.load_state_dict(state["state_dict"])
            trainer.average.n_averaged.fill_(int(state.get("average_updates", 0)))
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        registry.truncate_epochs(run_id, state["epoch"])  # later epochs are replayed
        return Progress(start_epoch=int(state["epoch"]) + 1, best_score=float(state["best_validation_f1"]),
                        best_epoch=state["best_epoch"], untrained=dict(state.get("untrained_metrics", {})))
    registry.truncate_epochs(run_id, -1)
    untrained = validate(trainer.model, data.dataset, data.validation_indices, config, trainer.device,
                         trainer.precision)
    note = f"initial weights from {config.init_from}" if config.init_from else "untrained model"
    registry.add_epoch(run_id, 0, {**untrained, "note": note})
    return Progress(untrained=untrained)


def train_one_epoch(trainer: Trainer, data: TrainingData, config: RunConfig, epoch: int, stop: StopRequest,
                    report: Callable[..., None], show_progress: bool,
                    step_losses: list[float] | None = None) -> float | None:
    """``steps_per_epoch`` optimiser steps; the mean training loss, or None if stopped mid-epoch.

    Each step's loss is appended to ``step_losses`` and the list so far goes with every progress
    report, so the app can draw the loss per step while the first epoch runs.
    """
    step_losses = [] if step_losses is None else step_losses
    from tqdm import tqdm

    torch.manual_seed(epoch_seed(config.seed + 2, epoch))
    trainer.model.train()
    last_report, loss_sum = 0.0, 0.0
    batches = prefetch(patch_batches(data, config, epoch))
    bar = tqdm(batches, total=config.steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
               disable=not show_progress, leave=True, dynamic_ncols=True)
    per_step_schedule = config.lr_schedule in PER_STEP_SCHEDULES
    for step, (images, targets, weights) in enumerate(bar, start=1):
        inputs = torch.from_numpy(images).to(trainer.device).contiguous(memory_format=trainer.memory_format)
        target = torch.from_numpy(targets).to(trainer.device)
        pixel_weights = None if weights is None else torch.from_numpy(weights).to(trainer.device)
        with autocast_context(trainer.device, trainer.precision):
            logits = trainer.model(inputs)
        loss = segmentation_loss(logits.float(), target, config.loss, pixel_weights)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        if per_step_schedule:
            trainer.scheduler.step()
        if trainer.average is not None:
            trainer.average.update_parameters(trainer.model)
        step_losses.append(loss.item())
        loss_sum += step_losses[-1]
        bar.set_postfix(loss=f"{loss_sum / step:.4f}")
        if time.time() - last_report > 1.0 or step == config.steps_per_epoch:
            last_report = time.time()
            report(epoch, step, train_loss=loss_sum / step, phase="training", step_losses=list(step_losses))
        if stop.requested:
            bar.close()
            return None
    bar.close()
    if not per_step_schedule:
        trainer.scheduler.step()
    return loss_sum / config.steps_per_epoch


def save_epoch(trainer: Trainer, data: TrainingData, config: RunConfig, epoch: int, metrics: dict[str, Any],
               progress: Progress, checkpoint_dir, improved: bool) -> None:
    """Write ``last.pt`` (and ``best.pt`` when the ``best_by`` score improved), atomically."""
    payload = {
        "state_dict": trainer.kept_model.state_dict(),
        "config": config.to_dict(),
        "epoch": epoch,
        "in_channels": data.in_channels,
        "metrics": metrics,
        "untrained_metrics": progress.untrained,
        "best_validation_f1": progress.best_score,
        "best_epoch": progress.best_epoch,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "split": {"train": data.train_indices, "validation": data.validation_indices},
    }
    if trainer.average is not None:
        payload["training_state_dict"] = trainer.model.state_dict()
        payload["average_updates"] = int(trainer.average.n_averaged)
    save_checkpoint(checkpoint_dir / "last.pt", payload)
    if improved:
        save_checkpoint(checkpoint_dir / "best.pt", payload)


def _train(config: RunConfig, run_id: str, registry: Registry, show_progress: bool,
           stop: StopRequest, started: float) -> TrainResult:
    """The run's steps: data, model, resume or epoch 0, then train / validate / save per epoch."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint_dir = registry.get_run(run_id).checkpoint_dir
    data = prepare_data(config)
    for warning in data.dataset.warnings:  # printed even with --quiet: the data deserves a look
        print(f"warning: {config.dataset}: {warning}", file=sys.stderr, flush=True)
    trainer = build_trainer(config, data.in_channels, registry)
    progress = resume_or_start(trainer, data, config, run_id, registry, checkpoint_dir / "last.pt")

    def report(epoch: int, step: int, **extra: Any) -> None:
        steps_done = (epoch - progress.start_epoch) * config.steps_per_epoch + step
        steps_left = (config.epochs - epoch + 1) * config.steps_per_epoch - step
        elapsed = time.time() - started
        eta = elapsed / steps_done * steps_left if steps_done else None
        registry.update_progress(run_id, epoch=epoch, epochs=config.epochs, step=step,
                                 steps_per_epoch=config.steps_per_epoch, eta_seconds=eta,
                                 elapsed_seconds=elapsed, **extra)

    history: list[dict[str, Any]] = []
    status = "finished"
    epoch = progress.start_epoch - 1
    stored = registry.epochs(run_id)  # what early stopping decides on (reloaded on resume)
    stop_reason = (early_stopping(stored, config.early_stopping_patience, config.early_stopping_min_epochs,
                                  config.best_by)[1]
                   if 1 <= epoch < config.epochs else None)
    first_epoch = config.epochs + 1 if stop_reason else progress.start_epoch  # stopped before it was interrupted
    for epoch in range(first_epoch, config.epochs + 1):
        epoch_started = time.time()
        step_losses: list[float] = []
        train_loss = train_one_epoch(trainer, data, config, epoch, stop, report, show_progress, step_losses)
        if train_loss is None:  # stopped mid-epoch: last.pt still holds the previous whole epoch
            status, epoch = "cancelled", epoch - 1
            break
        train_seconds = time.time() - epoch_started
        report(epoch, config.steps_per_epoch, phase="validating")
        metrics = validate(trainer.kept_model, data.dataset, data.validation_indices, config, trainer.device,
                           trainer.precision)
        metrics.update(
            train_loss=train_loss,
            learning_rate=trainer.optimizer.param_groups[0]["lr"],
            train_seconds=train_seconds,
            epoch_seconds=time.time() - epoch_started,
            patches_per_second=config.steps_per_epoch * config.batch_size / train_seconds,
            step_losses=[round(value, 6) for value in step_losses],  # the live chart's loss per step
        )
        improved = metrics[config.best_by] > progress.best_score
        if improved:
            progress.best_score, progress.best_epoch = metrics[config.best_by], epoch
        if epoch < config.epochs:  # stopping at the last epoch is no early stop
            stop_reason = early_stopping([*stored, {"epoch": epoch, **metrics}], config.early_stopping_patience,
                                         config.early_stopping_min_epochs, config.best_by)[1]
        if stop_reason:
            metrics["note"] = stop_reason
        save_epoch(trainer, data, config, epoch, metrics, progress, checkpoint_dir, improved)
        registry.add_epoch(run_id, epoch, metrics)
        stored.append({"epoch": epoch, **metrics})
        history.append({"epoch": epoch, **metrics})
        if show_progress:
            tqdm.write(f"epoch {epoch}: train loss {metrics['train_loss']:.4f}  val loss {metrics['val_loss']:.4f}"
                       f"  val F1 {metrics['val_f1']:.4f}  ({metrics['epoch_seconds']:.1f} s)")
            if stop_reason:
                tqdm.write(stop_reason)
        if stop_reason:
            break
        if stop.requested:
            status = "cancelled"
            break
    if stop_reason:
        epoch = stored[-1]["epoch"]
        registry.update_progress(run_id, epoch=epoch, epochs=config.epochs, step=config.steps_per_epoch,
                                 steps_per_epoch=config.steps_per_epoch, eta_seconds=0.0,
                                 elapsed_seconds=time.time() - started, phase="stopped early",
                                 stop_reason=stop_reason, stopped_at_epoch=epoch, best_epoch=progress.best_epoch)

    stored = registry.epochs(run_id)
    final = stored[-1] if epoch >= 1 and stored else {}
    return TrainResult(
        run_id=run_id,
        status=status,
        epochs_done=max(epoch, progress.start_epoch - 1),
        best_epoch=progress.best_epoch,
        best_validation_f1=progress.best_score if progress.best_epoch is not None else None,
        final_metrics={k: v for k, v in final.items() if k != "epoch" and isinstance(v, (int, float))},
        untrained_metrics={k: v for k, v in progress.untrained.items() if isinstance(v, (int, float))},
        seconds=time.time() - started,
        checkpoint_dir=str(checkpoint_dir),
        history=history,
        stop_reason=stop_reason,
        best_by=config.best_by,
    )
