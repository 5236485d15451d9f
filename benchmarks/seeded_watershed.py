"""How ``seeded-watershed``'s two thresholds move a ``mask+contour`` run's DSB mAP, on its training
and on its validation images.

    python -m benchmarks.seeded_watershed --run RUN_ID [--run RUN_ID ...] [--thresholds 0.5,0.6,0.7]
        [--contour-thresholds 0.05,0.1,0.15,0.2,0.3,0.5]

For each run: its best checkpoint predicts every training image and every validation image once
(the probability and outline maps are kept in memory), then each pair of the foreground
``threshold`` and the outline's ``contour_threshold`` post-processes all of them. The table gives
the mean DSB mAP (IoU 0.50 to 0.95, TP/(TP+FP+FN), per image then averaged) and the object recall
at IoU > 0.5 (matched true objects over all true objects) on each part.

Read the training columns to choose: a setting picked on the validation images would inflate the
score it is then reported with. The validation columns show whether the choice carries over.
docs/recipes.md holds the results that set the default ``contour_threshold``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np


@dataclass
class PartMaps:
    """One part's (training or validation) predicted maps and true instances, image by image."""

    probabilities: list[np.ndarray]
    contours: list[np.ndarray]
    truths: list[np.ndarray]
    connectivity: int


def predict_parts(run_id: str) -> dict[str, PartMaps]:
    """The best checkpoint's foreground and outline maps on the run's training and validation images."""
    from core.datasets import load_dataset, split
    from core.inference import load_model, predict_image
    from core.postprocess import binary_to_instances
    from core.runs import Registry
    from tqdm import tqdm

    record = Registry().get_run(run_id)
    config = record.config
    if config.target != "mask+contour":
        raise SystemExit(f"run {run_id} was trained with target {config.target!r}: seeded-watershed needs "
                         "'mask+contour'")
    loaded = load_model(record.checkpoint_dir / "best.pt", device="cpu")
    dataset = load_dataset(config.dataset, config.root, split="train", size=config.image_size)
    parts = split(dataset, config.train_fraction, config.seed, config.validation_fraction,
                  strategy=config.split_strategy, group_pattern=config.group_pattern)
    maps = {}
    for name, indices in (("train", parts.train), ("val", parts.validation)):
        part = PartMaps([], [], [], dataset.spec.connectivity)
        for index in tqdm(list(indices), desc=f"{run_id} {name}"):
            sample = dataset[index]
            prediction = predict_image(loaded, sample.image)
            part.probabilities.append(prediction.probability)
            part.contours.append(prediction.contour)
            part.truths.append(sample.instances if sample.instances is not None
                               else binary_to_instances(sample.mask, dataset.spec.connectivity))
        maps[name] = part
    return maps


def score_part(part: PartMaps, threshold: float, contour_threshold: float) -> tuple[float, float]:
    """(mean DSB mAP, object recall at IoU > 0.5) of one part with one pair of thresholds."""
    from core.metrics import instance_scores
    from core.postprocess import postprocess

    scores = [instance_scores(truth, postprocess(probability, "seeded-watershed", contour=contour,
                                                 threshold=threshold, contour_threshold=contour_threshold,
                                                 connectivity=part.connectivity))
              for probability, contour, truth in zip(part.probabilities, part.contours, part.truths)]
    recall = sum(score.tp50 for score in scores) / max(1, sum(score.n_truth for score in scores))
    return float(np.mean([score.dsb_map for score in scores])), recall


def floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", dest="runs", action="append", required=True, help="a mask+contour run (repeatable)")
    parser.add_argument("--thresholds", type=floats, default=[0.5, 0.6, 0.7], help="foreground thresholds")
    parser.add_argument("--contour-thresholds", type=floats, default=[0.05, 0.1, 0.15, 0.2, 0.3, 0.5])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    maps = {run_id: predict_parts(run_id) for run_id in args.runs}
    print("\nDSB mAP (IoU 0.50 to 0.95, TP/(TP+FP+FN), mean over images) / object recall at IoU > 0.5, "
          "seeded-watershed; train = the run's training images, val = its validation part\n")
    header = ["threshold", "contour_threshold"] + [f"{run_id} {part}" for run_id in args.runs for part in ("train", "val")]
    header += ["mean train", "mean val"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for threshold in args.thresholds:
        for contour_threshold in args.contour_thresholds:
            cells, means = [], {"train": [], "val": []}
            for run_id in args.runs:
                for part in ("train", "val"):
                    dsb_map, recall = score_part(maps[run_id][part], threshold, contour_threshold)
                    means[part].append(dsb_map)
                    cells.append(f"{dsb_map:.4f} / {recall:.3f}")
            cells += [f"{np.mean(means['train']):.4f}", f"{np.mean(means['val']):.4f}"]
            print(f"| {threshold:g} | {contour_threshold:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
