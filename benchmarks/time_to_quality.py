"""Wall-clock time until a small-data ISBI 2012 run reaches a membrane F1 target.

    python -m benchmarks.time_to_quality [--root ../shared/data/isbi2012] [--minutes 10]

ISBI 2012, train_fraction 0.1 (3 training images), on this CPU, the default settings of
``core.train`` (width 16, bf16 where the CPU has it, BCE, Adam 1e-3) and ``light`` augmentation
unless options say otherwise. Validation
on the fixed 6-image validation part after every epoch of ``--steps`` steps. Prints the F1
of both classes over time (membrane = the negative class of ISBI's cell-interior target),
when membrane F1 first reached 0.80 and 0.85, and the best membrane F1 within the budget.
"""

from __future__ import annotations

import argparse
import os
import time

from core.paths import shared_data_dir


class Deadline:
    """Stops training once the time budget is spent (checked after every step)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.time() + seconds

    @property
    def requested(self) -> bool:
        return time.time() > self.end

    def install(self):
        return lambda: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_root = shared_data_dir() / "isbi2012" if shared_data_dir() else None
    parser.add_argument("--root", default=default_root, help="folder with train-volume.tif and train-labels.tif")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch (validation after each)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--augmentation", default="light", help="none, light, medium or heavy (default light)")
    parser.add_argument("--loss", default="bce", help="bce or bce+dice (default bce)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--batch", type=int, default=8, help="patches per step (default 8)")
    parser.add_argument("--patch", type=int, default=256, help="patch side in pixels (default 256)")
    parser.add_argument("--lr-schedule", default="constant", help="constant or cosine (cosine needs --epochs)")
    parser.add_argument("--epochs", type=int, default=10_000,
                        help="epochs (default: as many as fit in --minutes); a cosine schedule decays over these")
    args = parser.parse_args()
    if args.root is None:
        raise SystemExit("ISBI 2012 data not found: pass --root")
    os.environ.setdefault("UNETLAB_CACHE", "/tmp/unetlab-bench/cache")
    os.environ.setdefault("UNETLAB_CHECKPOINTS", "/tmp/unetlab-bench/checkpoints")

    from core.config import RunConfig
    from core.runs import Registry
    from core.train import train_run

    config = RunConfig(dataset="isbi2012", root=str(args.root), train_fraction=0.1, augmentation=args.augmentation,
                       epochs=args.epochs, lr_schedule=args.lr_schedule, steps_per_epoch=args.steps, base_width=args.width, precision=args.precision,
                       loss=args.loss, learning_rate=args.lr, batch_size=args.batch, patch_size=args.patch)
    start = time.time()
    result = train_run(config, show_progress=False, stop=Deadline(args.minutes * 60))
    epochs = [row for row in Registry().epochs(result.run_id) if row["epoch"] > 0]

    print(f"# time_to_quality: ISBI 2012, 3 training images, {args.augmentation} augmentation, loss {args.loss}, "
          f"lr {args.lr:g} {args.lr_schedule}, width {args.width}, precision {args.precision}, {args.steps} steps x batch "
          f"{config.batch_size} of {config.patch_size}x{config.patch_size} per epoch, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'epoch':>5} {'minutes':>8} {'patches':>8} {'membrane F1':>12} {'interior F1':>12}")
    elapsed, reached = 0.0, {}
    for row in epochs:
        elapsed += row["epoch_seconds"]
        patches = row["epoch"] * config.steps_per_epoch * config.batch_size
        membrane = row["val_f1_negative"]
        for target in (0.80, 0.85):
            if membrane >= target and target not in reached:
                reached[target] = (elapsed, patches)
        print(f"{row['epoch']:>5} {elapsed / 60:>8.2f} {patches:>8} {membrane:>12.4f} {row['val_f1']:>12.4f}")
    best = max(epochs, key=lambda row: row["val_f1_negative"])
    print()
    for target in (0.80, 0.85):
        if target in reached:
            seconds, patches = reached[target]
            print(f"membrane F1 >= {target:.2f} first at {seconds / 60:.2f} min ({patches} patch-images)")
        else:
            print(f"membrane F1 >= {target:.2f} not reached within {args.minutes:g} min")
    print(f"best membrane F1 within {args.minutes:g} min: {best['val_f1_negative']:.4f} (epoch {best['epoch']}); "
          f"wall time including validation and start-up: {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
