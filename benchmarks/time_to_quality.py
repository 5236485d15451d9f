"""Quality reached within a fixed training time on this machine: the three targets of issue #14.

    python -m benchmarks.time_to_quality --case dsb     # DSB 2018, 80% of the shared images, 15 min
    python -m benchmarks.time_to_quality --case isbi    # ISBI 2012, 3 training slices, 10 min
    python -m benchmarks.time_to_quality --case epfl    # EPFL, the shared training stack, 15 min
    python -m benchmarks.time_to_quality --case dsb --set target=mask --set loss=bce   # another recipe

Each case trains one run with its recipe (:data:`CASES`), stopped by the clock at the case's
budget (its epochs are sized so the learning-rate schedule ends near the budget on a 2-core CPU;
the clock stops it anyway), validates after every epoch and keeps the best epoch's weights by the
recipe's ``best_by`` score (validation pixel F1 unless set), then evaluates those weights on the
case's split: the validation part for DSB and ISBI, the official testing stack (never trained or validated on) for EPFL. It prints the
learning curve, the scores, each target with MET or MISSED, and a Markdown row for the README's
table. Times are wall-clock minutes of training including the per-epoch validation.
"""

from __future__ import annotations

import argparse
import os
import time
import typing
from dataclasses import dataclass
from typing import Callable

from core.paths import shared_data_dir


@dataclass(frozen=True)
class Target:
    """One quality target: a score read from an evaluation summary and its threshold."""

    label: str
    score: Callable[[dict], float]
    threshold: float


@dataclass(frozen=True)
class Case:
    """A benchmark case: a recipe, a time budget, the split it is judged on and its targets."""

    name: str
    description: str
    settings: dict
    minutes: float
    split: str
    targets: tuple[Target, ...]


def _instances(method: str, key: str) -> Callable[[dict], float]:
    return lambda summary: summary["instances"][method][key]


#: Each case's recipe is the best of its trials in docs/recipes.md (for DSB: the best object recall;
#: the DSB mAP of every recipe tried was within its seed-to-seed spread).
CASES: dict[str, Case] = {
    "dsb": Case(
        name="dsb",
        description="DSB 2018 nuclei, 80% of the shared 83 images (66 train, 17 validation), native sizes",
        settings=dict(dataset="dsb2018", train_fraction=0.8, image_size=None, augmentation="light", epochs=45,
                      steps_per_epoch=100, batch_size=8, patch_size=128, base_width=16, depth=4, loss="bce+dice",
                      target="mask+contour", touching_weight=10.0, border_sigma=3.0, colour="grey-dark-background",
                      normalization="percentile", lr_schedule="warmup-cosine", learning_rate=2e-3,
                      # chosen on the training images of three runs (benchmarks/seeded_watershed.py)
                      threshold=0.7),
        minutes=15.0, split="val",
        targets=(Target("DSB mAP (IoU 0.50 to 0.95, TP/(TP+FP+FN)), seeded-watershed",
                        _instances("seeded-watershed", "dsb_map"), 0.55),
                 Target("object recall at IoU > 0.5, seeded-watershed",
                        _instances("seeded-watershed", "recall50"), 0.80)),
    ),
    "isbi": Case(
        name="isbi",
        description="ISBI 2012, train fraction 0.1 (3 training slices, 6 validation slices)",
        settings=dict(dataset="isbi2012", train_fraction=0.1, augmentation="light", epochs=40, steps_per_epoch=25,
                      batch_size=8, patch_size=256, base_width=16, depth=4, loss="bce",
                      lr_schedule="warmup-cosine", learning_rate=2e-3),
        minutes=10.0, split="val",
        targets=(Target("membrane F1 (pixel F1 of the negative class)",
                        lambda summary: summary["pixel"]["f1_negative"], 0.82),),
    ),
    "epfl": Case(
        name="epfl",
        description="EPFL mitochondria, the shared 16 training slices (13 train, 3 validation); "
                    "scored on the 8 shared slices of the official testing stack",
        settings=dict(dataset="epfl", train_fraction=0.8, augmentation="light", epochs=40, steps_per_epoch=25,
                      batch_size=8, patch_size=256, base_width=16, depth=4, loss="bce+dice",
                      lr_schedule="warmup-cosine", learning_rate=2e-3),
        minutes=15.0, split="test",
        targets=(Target("foreground IoU on the testing stack", lambda summary: summary["pixel"]["iou"], 0.85),),
    ),
}


class Deadline:
    """Stops training once the time budget is spent (checked after every step)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.time() + seconds

    @property
    def requested(self) -> bool:
        return time.time() > self.end

    def install(self):
        return lambda: None


def parse_overrides(pairs: list[str]) -> dict:
    """``key=value`` strings as RunConfig settings, each value parsed as its field's type."""
    from core.config import RunConfig

    # The annotated types, not the defaults' (image_size defaults to None but is an int | None).
    hints = typing.get_type_hints(RunConfig)
    types = {name: next((t for t in (bool, int, float) if t in (typing.get_args(hint) or (hint,))), str)
             for name, hint in hints.items() if name != "extra"}
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or key not in types:
            raise SystemExit(f"--set expects KEY=VALUE with KEY a RunConfig field, got {pair!r}")
        kind = types[key]
        if value.lower() in ("none", "null"):
            overrides[key] = None
        elif kind is bool:
            overrides[key] = value.lower() in ("1", "true", "yes")
        elif kind in (int, float):
            overrides[key] = kind(value)
        else:
            overrides[key] = value
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), required=True)
    parser.add_argument("--root", help="dataset folder (default ../shared/data/<dataset>)")
    parser.add_argument("--minutes", type=float, help="training budget (default: the case's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the case's recipe (a RunConfig field); repeatable")
    parser.add_argument("--tta", action="store_true", help="score predictions averaged over the 4 flips (4x slower)")
    args = parser.parse_args()
    case = CASES[args.case]
    settings = {**case.settings, **parse_overrides(args.overrides)}
    root = args.root or (str(shared_data_dir() / settings["dataset"]) if shared_data_dir() else None)
    if root is None:
        raise SystemExit(f"{settings['dataset']} data not found: pass --root")
    minutes = args.minutes or case.minutes
    os.environ.setdefault("UNETLAB_CACHE", "/tmp/unetlab-bench/cache")
    os.environ.setdefault("UNETLAB_CHECKPOINTS", "/tmp/unetlab-bench/checkpoints")

    from core.config import RunConfig
    from core.evaluate import evaluate_run
    from core.runs import Registry
    from core.train import train_run

    config = RunConfig(**settings, root=root, notes=f"time_to_quality {case.name}").validate()
    registry = Registry()
    started = time.time()
    result = train_run(config, registry=registry, show_progress=False, stop=Deadline(minutes * 60))
    trained_minutes = (time.time() - started) / 60
    evaluation = evaluate_run(result.run_id, split=case.split, registry=registry, show_progress=False,
                              flip_tta=args.tta)
    summary = evaluation.summary

    changed = {key: value for key, value in settings.items() if case.settings.get(key) != value}
    print(f"# time_to_quality --case {case.name}: {case.description}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# recipe: {', '.join(f'{k}={v}' for k, v in settings.items() if k not in ('dataset',))}")
    if changed:
        print(f"# changed from the case's recipe: {changed}")
    print(f"# run {result.run_id}; budget {minutes:g} min")
    epochs = registry.epochs(result.run_id)
    objects = any("val_dsb_map" in row for row in epochs)  # best_by=val_dsb_map stores it per epoch
    print(f"{'epoch':>5} {'minutes':>8} {'patches':>8} {'val pixel F1':>13} {'val neg. F1':>12} {'patches/s':>10}"
          + (f" {'val DSB mAP':>12}" if objects else ""))
    elapsed = 0.0
    for row in epochs:
        if row["epoch"] == 0:
            continue
        elapsed += row["epoch_seconds"]
        patches = row["epoch"] * config.steps_per_epoch * config.batch_size
        print(f"{row['epoch']:>5} {elapsed / 60:>8.2f} {patches:>8} {row['val_f1']:>13.4f} "
              f"{row['val_f1_negative']:>12.4f} {row.get('patches_per_second', 0):>10.1f}"
              + (f" {row.get('val_dsb_map', float('nan')):>12.4f}" if objects else ""))
    pixel = summary["pixel"]
    print()
    print(f"trained {trained_minutes:.2f} min (best epoch {result.best_epoch} by {config.best_by}); "
          f"scores of its weights on the "
          f"{'testing stack' if case.split == 'test' else 'validation part'} ({case.split})"
          f"{', predictions averaged over 4 flips' if args.tta else ''}:")
    print(f"  pixel F1 {pixel['f1']:.4f}, foreground IoU {pixel['iou']:.4f}, negative-class F1 "
          f"{pixel['f1_negative']:.4f} (TP {pixel.get('tp', '?')}, FP {pixel.get('fp', '?')}, FN {pixel.get('fn', '?')})")
    for method, scores in summary.get("instances", {}).items():
        print(f"  {method:<17} DSB mAP {scores['dsb_map']:.4f}, recall@0.5 {scores['recall50']:.4f}")
    cells = []
    for target in case.targets:
        value = target.score(summary)
        verdict = "MET" if value >= target.threshold else "MISSED"
        print(f"target: {target.label} >= {target.threshold:.2f} within {minutes:g} min: {value:.4f} {verdict}")
        cells.append(f"{value:.3f} ({verdict.lower()})")
    print()
    print(f"| {case.name} | {trained_minutes:.1f} | {result.best_epoch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
