"""``python -m core train``: train one run on this machine, with a progress bar."""

from __future__ import annotations

import argparse
import dataclasses
import json

from core.commands._executor import add_executor_options, ray_options, train_on_ray
from core.config import (AUGMENTATION_LEVELS, BEST_BY, COLOURS, DEVICES, LOSSES, LR_SCHEDULES, NORMALIZATIONS,
                         PRECISIONS, TARGETS, RunConfig)


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = RunConfig()
    parser = subparsers.add_parser(
        "train", help="train a U-Net run (or resume one)",
        description="Train a U-Net on a dataset's training part and validate it on the fixed validation part "
                    "after every epoch. Checkpoints go to checkpoints/<run id>/, metrics to the run registry.",
    )
    parser.add_argument("--dataset", default=defaults.dataset, help="dataset name (see `datasets list`)")
    parser.add_argument("--root", help="folder holding the dataset's files (not needed for synthetic sets)")
    parser.add_argument("--image-size", type=int, help="resize every image to N x N on load (paper: DSB 128, EM 512)")
    parser.add_argument("--train-fraction", type=float, default=defaults.train_fraction,
                        help="share of the images used for training, in (0, 1 - validation fraction]")
    parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction)
    parser.add_argument("--augmentation", choices=AUGMENTATION_LEVELS, default=defaults.augmentation)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--steps-per-epoch", type=int, default=defaults.steps_per_epoch,
                        help="optimiser steps (batches of random patches) per epoch")
    parser.add_argument("--patience", dest="early_stopping_patience", type=int, metavar="N",
                        help="stop after N epochs without an improvement of the --best-by score (the validation "
                             "pixel F1 by default; --epochs is then the most it trains; default: train every epoch)")
    parser.add_argument("--best-by", choices=tuple(BEST_BY), default=defaults.best_by,
                        help="validation score that picks the best epoch and drives --patience: the foreground's "
                             "pixel F1 (val_f1), the background's (val_f1_negative, for EM membranes) or the "
                             "objects' DSB mAP (val_dsb_map: seeded-watershed for --target mask+contour, else "
                             "components)")
    parser.add_argument("--min-epochs", dest="early_stopping_min_epochs", type=int,
                        default=defaults.early_stopping_min_epochs, metavar="N",
                        help="with --patience: never stop before epoch N (default 0)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--patch-size", type=int, default=defaults.patch_size)
    parser.add_argument("--width", dest="base_width", type=int, default=defaults.base_width,
                        help="channels of the first U-Net level (paper: 64)")
    parser.add_argument("--depth", type=int, default=defaults.depth, help="number of poolings")
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss)
    parser.add_argument("--target", choices=TARGETS, default=defaults.target,
                        help="what the network predicts: the mask, or the mask and every object's outline "
                             "(for the seeded-watershed post-processing that splits touching objects)")
    parser.add_argument("--border-weight", type=float, default=defaults.border_weight, metavar="W0",
                        help="the original U-Net's weight map: gaps between objects weigh up to 1 + W0 "
                             "(Ronneberger 2015: 10); 0 = off")
    parser.add_argument("--touching-weight", type=float, default=defaults.touching_weight, metavar="W",
                        help="object pixels where two objects touch with no gap weigh up to 1 + W "
                             "(for touching nuclei; 0 = off)")
    parser.add_argument("--border-sigma", type=float, default=defaults.border_sigma, metavar="PIXELS",
                        help="width of the weight maps' fall-off (default 5)")
    parser.add_argument("--foreground-sampling", type=float, default=defaults.foreground_sampling, metavar="SHARE",
                        help="share of patches centred on a foreground pixel (default 0: uniform)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default=defaults.normalization,
                        help="per-image intensity normalisation (percentile: 1st and 99.8th to 0 and 1)")
    parser.add_argument("--colour", choices=COLOURS, default=defaults.colour,
                        help="keep the channels, average to grey, or grey with bright backgrounds inverted")
    parser.add_argument("--init-from", metavar="RUN_ID",
                        help="start from a run's best weights (or a shipped model, e.g. starter-nuclei) "
                             "instead of a random initialisation; width, depth and target must match")
    parser.add_argument("--lr", dest="learning_rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=defaults.lr_schedule)
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay, metavar="DECAY",
                        help="validate, keep and predict with a moving average of the weights with this decay "
                             "per step (e.g. 0.99); 0 = off")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", choices=DEVICES, default=defaults.device)
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--study", help="name of the study this run belongs to")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue a stopped run from its last.pt")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                        help="skip the full evaluation after training")
    parser.add_argument("--json", action="store_true", help="print the run id and final metrics as JSON (last line)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    # Set by the queue worker: it claimed the run for this process, which trains it only if
    # the claim still holds (a run cancelled while this process started is left alone).
    parser.add_argument("--from-worker", action="store_true", help=argparse.SUPPRESS)
    add_executor_options(parser)
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return RunConfig(**values).validate()


def run(args: argparse.Namespace) -> int:
    from core.lifecycle import train_then_evaluate

    from core.train import check_init_from

    config = None if args.resume else config_from_args(args)
    if config is not None:
        check_init_from(config)  # weights that cannot fit are refused before any run is created
    if ray_options(args) is not None:  # --executor ray: the run trains as a Ray task, followed here
        return train_on_ray(args, config)
    options = dict(evaluate=args.evaluate, show_progress=not args.quiet, from_worker=args.from_worker)
    if args.resume:
        outcome = train_then_evaluate(run_id=args.resume, **options)
    else:
        outcome = train_then_evaluate(config, **options)
    result = outcome.result
    if args.json:
        print(json.dumps(outcome.summary()))
    else:
        v = result.final_metrics
        start = f"initial weights from {config.init_from}" if config and config.init_from else "untrained model"
        print(f"run {result.run_id}: {outcome.status} after {result.epochs_done} epochs in {result.seconds:.0f} s")
        if v:
            print(f"validation pixel F1 at threshold {RunConfig.threshold}: {v['val_f1']:.4f} "
                  f"({start}: {result.untrained_metrics.get('val_f1', float('nan')):.4f}); "
                  f"best {BEST_BY[result.best_by]} {result.best_validation_f1:.4f} at epoch {result.best_epoch}")
        if result.stop_reason:
            print(result.stop_reason)
        print(f"checkpoints: {result.checkpoint_dir}")
    return 0 if outcome.status == "finished" else 1
