"""Training-recipe trials: named settings trained and evaluated one after another, one table row each.

    python -m benchmarks.recipe_trials --dataset dsb2018 --trials mask,contour,contour-grey [--out docs/recipes-dsb.csv]

Each trial is a run of the same base (the dataset's base below, overridden by the trial's
settings), trained to the end of its epochs (no early stopping, so trials compare at an equal
number of steps), then evaluated on its validation part with every post-processing method it
can use. The printed Markdown row gives the setting, the wall time of training + evaluation on
this machine, the training throughput, the pixel F1 and, per method, the DSB mAP (IoU 0.50 to
0.95, TP/(TP+FP+FN)) and object recall at IoU > 0.5. Rows are appended to ``--out`` (CSV) as they
finish, so a long series can be stopped and read at any point. docs/recipes.md holds the results.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

#: Per dataset: the base every trial starts from.
BASES: dict[str, dict] = {
    "dsb2018": dict(dataset="dsb2018", train_fraction=0.8, image_size=None, augmentation="light", epochs=20,
                    steps_per_epoch=25, batch_size=8, patch_size=128, base_width=16, depth=4, loss="bce+dice"),
    "isbi2012": dict(dataset="isbi2012", train_fraction=0.1, augmentation="light", epochs=20, steps_per_epoch=25,
                     batch_size=8, patch_size=256, base_width=16, depth=4, loss="bce"),
    "epfl": dict(dataset="epfl", train_fraction=0.8, augmentation="light", epochs=20, steps_per_epoch=25,
                 batch_size=8, patch_size=256, base_width=16, depth=4, loss="bce+dice"),
}

#: Trial name -> settings over the base.
TRIALS: dict[str, dict] = {
    "mask": {},
    "mask-bce": dict(loss="bce"),
    "mask-focal": dict(loss="focal"),
    "mask-dice": dict(loss="dice"),
    "mask-border": dict(border_weight=10.0),
    "contour": dict(target="mask+contour"),
    "contour-grey": dict(target="mask+contour", colour="grey-dark-background", normalization="percentile"),
    "contour-grey-border": dict(target="mask+contour", colour="grey-dark-background", normalization="percentile",
                                border_weight=10.0),
    "contour-grey-fg": dict(target="mask+contour", colour="grey-dark-background", normalization="percentile",
                            foreground_sampling=0.5),
    "contour-grey-warmup": dict(target="mask+contour", colour="grey-dark-background", normalization="percentile",
                                lr_schedule="warmup-cosine", learning_rate=2e-3),
    "contour-grey-onecycle": dict(target="mask+contour", colour="grey-dark-background", normalization="percentile",
                                  lr_schedule="one-cycle", learning_rate=3e-3),
    "contour-grey-poly": dict(target="mask+contour", colour="grey-dark-background", normalization="percentile",
                              lr_schedule="poly", learning_rate=2e-3),
    "warmup": dict(lr_schedule="warmup-cosine", learning_rate=2e-3),
    "percentile": dict(normalization="percentile"),
    "fg": dict(foreground_sampling=0.5),
}


#: The CSV's columns: every method's scores, whichever a trial can use (empty where it cannot).
FIELDS = ["trial", "dataset", "run", "settings", "steps", "train_minutes", "total_minutes", "patches_per_second",
          "best_epoch", "pixel_f1", "membrane_f1",
          *(f"{key}[{method}]" for method in ("components", "watershed", "kmeans-watershed", "seeded-watershed")
            for key in ("dsb_map", "recall50"))]


def run_trial(dataset: str, root: str | None, name: str, threads: int | None, epochs: int | None) -> dict:
    from core.config import RunConfig
    from core.evaluate import evaluate_run
    from core.runs import Registry
    from core.train import train_run

    settings = {**BASES[dataset], **TRIALS[name], "root": root, "threads": threads, "notes": f"recipe trial {name}"}
    if epochs:
        settings["epochs"] = epochs
    config = RunConfig(**settings).validate()
    registry = Registry()
    started = time.time()
    result = train_run(config, registry=registry, show_progress=False)
    trained = time.time() - started
    evaluation = evaluate_run(result.run_id, registry=registry, show_progress=False)
    summary = evaluation.summary
    history = registry.epochs(result.run_id)
    speeds = [row["patches_per_second"] for row in history if row.get("patches_per_second")]
    row = {"trial": name, "dataset": dataset, "run": result.run_id,
           "settings": ", ".join(f"{k}={v}" for k, v in TRIALS[name].items()) or "base",
           "steps": config.epochs * config.steps_per_epoch, "train_minutes": round(trained / 60, 2),
           "total_minutes": round((time.time() - started) / 60, 2),
           "patches_per_second": round(sum(speeds) / len(speeds), 1) if speeds else None,
           "best_epoch": result.best_epoch, "pixel_f1": round(summary["pixel"]["f1"], 4)}
    for method, scores in summary["instances"].items():
        row[f"dsb_map[{method}]"] = round(scores["dsb_map"], 4)
        row[f"recall50[{method}]"] = round(scores["recall50"], 4)
    if summary.get("kind") == "membrane":
        row["membrane_f1"] = round(summary["pixel"]["f1_negative"], 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(BASES), default="dsb2018")
    parser.add_argument("--root", help="dataset folder (default ../shared/data/<dataset>)")
    parser.add_argument("--trials", default="mask,contour", help=f"comma-separated, from: {', '.join(TRIALS)}")
    parser.add_argument("--threads", type=int, help="torch threads per trial (default: torch's choice)")
    parser.add_argument("--epochs", type=int, help="override the base's epochs")
    parser.add_argument("--out", help="CSV file the rows are appended to")
    args = parser.parse_args()
    from core.paths import shared_data_dir

    root = args.root or (str(shared_data_dir() / args.dataset) if shared_data_dir() else None)
    os.environ.setdefault("UNETLAB_CACHE", "/tmp/unetlab-trials/cache")
    os.environ.setdefault("UNETLAB_CHECKPOINTS", "/tmp/unetlab-trials/checkpoints")
    for name in args.trials.split(","):
        row = run_trial(args.dataset, root, name.strip(), args.threads, args.epochs)
        print(" | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        if args.out:
            path = Path(args.out)
            new = not path.exists()
            with path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(row)


if __name__ == "__main__":
    main()
