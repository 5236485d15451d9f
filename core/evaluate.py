"""Stored evaluation of a trained run.

``evaluate_run(run_id)`` predicts every image of the run's validation part (or the
dataset's official test split) with its best checkpoint, and computes:

- pixel scores at the run's threshold, summed over images, with the all-positive
  baseline and the negative class's F1 beside them;
- ROC and precision-recall curves with ROC-AUC and average precision (histogram based);
- instance scores (DSB mAP, the paper's mAP, AP@0.5 with TP/FP/FN) for every
  post-processing method side by side;
- for membrane datasets, the ISBI 2012 foreground-restricted V_Rand and V_Info;
- per-image scores, and the probability maps of a few images for the viewers.

The result is stored in the registry (summary as JSON, curves and maps as ``.npz``).
Re-evaluating replaces the stored result: the same checkpoint gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from core.errors import RunError
from core.metrics import (
    METRIC_NAMES,
    PixelCounts,
    PixelCurveAccumulator,
    foreground_restricted_scores,
    instance_scores,
    pixel_counts,
    summarize_instance_scores,
)
from core.postprocess import METHODS, PARAMETERS, binary_to_instances, methods_for, postprocess
from core.runs import Registry, check_run_id, is_external

INSTANCE_KEYS = ("dsb_map", "paper_map", "ap50", "precision50", "recall50", "f1_50", "tp50", "fp50", "fn50",
                 "mean_matched_iou")
RAND_KEYS = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")


@dataclass
class Evaluation:
    """Everything computed for one run on one split (see the module docstring)."""

    run_id: str
    split: str
    summary: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def headline(self) -> dict[str, Any]:
        """The main figures, flat, keyed by short metric keys (names in ``summary['metric_names']``)."""
        pixel, curves = self.summary["pixel"], self.summary["curves"]
        out = {
            "split": self.split,
            "n_images": self.summary["n_images"],
            "pixel_f1": pixel["f1"],
            "pixel_f1_all_positive": pixel["f1_all_positive"],
            "pixel_f1_negative": pixel["f1_negative"],
            "roc_auc": curves["roc_auc"],
            "average_precision": curves["average_precision"],
        }
        for method, scores in self.summary["instances"].items():
            for key in ("dsb_map", "paper_map", "ap50"):
                out[f"{key}[{method}]"] = scores[key]
        for method, scores in self.summary.get("foreground_restricted", {}).items():
            out[f"v_rand[{method}]"] = scores["v_rand"]
            out[f"v_info[{method}]"] = scores["v_info"]
        return out


def evaluation_images(run_id: str, split_name: str, registry: Registry):
    """(dataset, indices, description) of the images a run is evaluated on.

    ``val``: the run's fixed validation part, cut as the run was (its ``split_strategy`` and
    ``group_pattern``); ``description`` is that Split's sentence (strategy, validation images,
    gap). ``test``: the dataset's official test split, which training never sees.
    """
    return split_images(registry.get_run(run_id).config, split_name)


def split_images(config: Any, split_name: str):
    """(dataset, indices, description) of the images a run with ``config`` is evaluated on (see
    :func:`evaluation_images`); an external model given the same dataset, seed and split settings
    meets exactly these images."""
    from core.datasets import load_dataset, split

    if split_name == "val":
        dataset = load_dataset(config.dataset, config.root, split="train", size=config.image_size)
        parts = split(dataset, config.train_fraction, config.seed, config.validation_fraction,
                      strategy=config.split_strategy, group_pattern=config.group_pattern)
        return dataset, list(parts.validation), parts.description
    if split_name == "test":
        dataset = load_dataset(config.dataset, config.root, split="test", size=config.image_size)
        if not dataset.has_masks:
            raise RunError(f"the test split of {config.dataset} has no labels, so it cannot be scored")
        return dataset, list(range(len(dataset))), "the dataset's official test split (never trained on)"
    raise RunError(f"unknown split {split_name!r}; use 'val' (the run's validation part) or 'test'")


def evaluate_run(
    run_id: str,
    split: str = "val",
    registry: Registry | None = None,
    checkpoint: str = "best",
    methods: tuple[str, ...] | None = None,
    n_stored_maps: int = 4,
    show_progress: bool = True,
    store: bool = True,
    flip_tta: bool = False,
) -> Evaluation:
    """Evaluate a trained run and store the result (see the module docstring).

    Parameters
    ----------
    run_id : str
    split : {"val", "test"}
    checkpoint : {"best", "last"}
        Which of the run's checkpoints to evaluate.
    methods : tuple of str
        Post-processing methods for the instance scores (default: all of them).
    n_stored_maps : int
        Probability maps kept (float16) for the mask viewers, from the first images.
    flip_tta : bool
        Average each prediction over the four flips (test-time augmentation, 4x slower), as
        the Segment page and ``predict --tta`` can; the summary records it.
    """
    from core.inference import load_model, predict_image

    check_run_id(run_id)  # the id names the arrays file: refuse a bad one before any work
    registry = registry or Registry()
    record = registry.get_run(run_id)
    if is_external(record.config):
        raise RunError(f"run {run_id} is an external model ({record.config.extra.get('method')}), not trained here; "
                       "score it again with `unetlab evaluate-model`")
    path = record.checkpoint_dir / f"{checkpoint}.pt"
    if not path.exists():
        raise RunError(f"run {run_id} has no {checkpoint}.pt yet (status {record.status})")
    started = time.time()
    config = record.config
    loaded = load_model(path, device=config.device)
    dataset, indices, split_description = evaluation_images(run_id, split, registry)
    # A mask+contour model is also scored with the methods that use its outline map.
    methods = tuple(methods or methods_for(config.output_channels > 1))

    def predict(sample: Any, index: int) -> tuple[np.ndarray, None, np.ndarray | None]:
        prediction = predict_image(loaded, sample.image, source=sample.name, flip_tta=flip_tta)
        return prediction.probability, None, prediction.contour

    scores, arrays = score_images(dataset, indices, predict, config.threshold, methods, n_stored_maps,
                                  desc=f"evaluating {run_id} ({split})", show_progress=show_progress)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "split": split,
        "split_description": split_description,
        "dataset": config.dataset,
        "positive_class": dataset.spec.positive_class,
        "kind": dataset.spec.kind,
        "checkpoint": f"{checkpoint}.pt",
        "epoch": loaded.epoch,
        "flip_tta": flip_tta,
        **scores,
    }
    summary["seconds"] = time.time() - started
    evaluation = Evaluation(run_id=run_id, split=split, summary=summary, arrays=arrays)
    if store:
        registry.save_evaluation(run_id, split, summary, arrays)
    return evaluation


#: What :func:`score_images` calls per image: (sample, dataset index) -> (probability float32 (H, W) in
#: [0, 1], instance labels int (H, W) or None[, outline probability float32 (H, W) or None]). Labels,
#: when given, are the model's own objects (a model that outputs label images): every method is then
#: scored on them instead of post-processing. The optional third item is a mask+contour model's
#: outline map, which the seeded-watershed method needs.
Predictor = Callable[[Any, int], tuple[np.ndarray, np.ndarray | None]]


def score_images(dataset: Any, indices: list[int], predict: Predictor, threshold: float,
                 methods: tuple[str, ...] | None = None, n_stored_maps: int = 4, desc: str = "evaluating",
                 show_progress: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Every score of :func:`evaluate_run` for any predictor on the images ``indices`` of ``dataset``.

    Parameters
    ----------
    dataset : core.datasets.Dataset with masks
    predict : :data:`Predictor`
    threshold : float, the foreground threshold of the pixel scores and the post-processing
    methods : post-processing methods for the instance scores (default: all)
    n_stored_maps : probability maps (float16) and labels kept for the viewers, from the first images

    Returns
    -------
    scores : dict
        The summary's score fields: ``threshold``, ``n_images``, ``image_names``, ``pixel``, ``curves``,
        ``instances``, ``per_image``, ``metric_names``, ``methods``, ``method_parameters`` (each method's
        parameters, unless the predictor gave its own objects) and ``foreground_restricted`` for
        membrane sets.
    arrays : dict of ndarray, what :meth:`Registry.save_evaluation` stores beside the summary.
    """
    from tqdm import tqdm

    methods = tuple(methods or METHODS)
    membrane = dataset.spec.kind == "membrane"
    counts = PixelCounts()
    curves = PixelCurveAccumulator()
    per_method = {method: [] for method in methods}
    rand_per_method = {method: [] for method in methods}
    per_image, arrays = [], {}
    labels_given = False  # an external model's own objects, not post-processed here
    for position, index in enumerate(tqdm(indices, desc=desc, disable=not show_progress)):
        sample = dataset[index]
        probability, own_labels, *more = predict(sample, index)
        labels_given = labels_given or own_labels is not None
        contour = more[0] if more else None
        image_counts = pixel_counts(probability, sample.mask, threshold)
        counts = counts + image_counts
        curves.update(probability, sample.mask)
        truth_labels = (sample.instances if sample.instances is not None
                        else binary_to_instances(sample.mask, connectivity=dataset.spec.connectivity))
        row = {"name": sample.name, "pixel_f1": image_counts.f1, "pixel_tp": image_counts.tp,
               "pixel_fp": image_counts.fp, "pixel_fn": image_counts.fn, "n_truth_objects": int(truth_labels.max())}
        for method in methods:
            labels = (own_labels if own_labels is not None else
                      postprocess(probability, method, contour=contour, threshold=threshold,
                                  connectivity=dataset.spec.connectivity))
            scores = instance_scores(truth_labels, labels)
            per_method[method].append(scores)
            row[f"dsb_map[{method}]"] = scores.dsb_map
            row[f"n_predicted_objects[{method}]"] = scores.n_predicted
            if membrane:
                rand = foreground_restricted_scores(truth_labels, labels)
                rand_per_method[method].append(rand)
                row[f"v_rand[{method}]"] = rand.v_rand
            if position < n_stored_maps:
                arrays[f"labels_{position}_{method}"] = labels.astype(np.int32)
        per_image.append(row)
        if position < n_stored_maps:
            arrays[f"probability_{position}"] = probability.astype(np.float16)
            arrays[f"index_{position}"] = np.asarray(index)

    curve_result = curves.result()
    arrays.update({f"curve_{key}": value for key, value in curve_result.to_dict().items()})
    summary: dict[str, Any] = {
        "threshold": threshold,
        "n_images": len(indices),
        "image_names": [dataset[i].name for i in indices],
        "pixel": {
            "tp": counts.tp, "fp": counts.fp, "fn": counts.fn, "tn": counts.tn,
            "precision": counts.precision, "recall": counts.recall, "f1": counts.f1, "iou": counts.iou,
            "accuracy": counts.accuracy, "f1_negative": counts.negative_f1,
            "f1_all_positive": counts.all_positive_baseline().f1, "prevalence": counts.prevalence,
        },
        "curves": {"roc_auc": curve_result.roc_auc, "average_precision": curve_result.average_precision,
                   "n_positive": curve_result.n_positive, "n_negative": curve_result.n_negative},
        "instances": {},
        "per_image": per_image,
        "metric_names": dict(METRIC_NAMES),
        "methods": list(methods),
    }
    if not labels_given:
        # Defaults change between versions (seeded-watershed's contour_threshold did): an old
        # summary and a new one can then be told apart.
        summary["method_parameters"] = {
            method: asdict(PARAMETERS[method](threshold=threshold, connectivity=dataset.spec.connectivity))
            for method in methods}
    for method in methods:
        aggregate = summarize_instance_scores(per_method[method])
        summary["instances"][method] = {key: _plain(getattr(aggregate, key)) for key in INSTANCE_KEYS}
        summary["instances"][method]["n_truth"] = sum(s.n_truth for s in per_method[method])
        summary["instances"][method]["n_predicted"] = sum(s.n_predicted for s in per_method[method])
    if membrane:
        summary["foreground_restricted"] = {
            method: {key: _nanmean([getattr(r, key) for r in rand_per_method[method]]) for key in RAND_KEYS}
            for method in methods
        }
    return summary, arrays


def load_evaluation(run_id: str, split: str = "val", registry: Registry | None = None) -> Evaluation | None:
    """The stored evaluation of a run, or None."""
    registry = registry or Registry()
    summary = registry.get_evaluation(run_id, split)
    if summary is None:
        return None
    return Evaluation(run_id=run_id, split=split, summary=summary, arrays=registry.evaluation_arrays(run_id, split))


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (JSON); NaN stays NaN."""
    return value.item() if isinstance(value, np.generic) else value


def _nanmean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def format_evaluation(evaluation: Evaluation) -> str:
    """A readable report naming every metric exactly, with the counts behind the rates."""
    s = evaluation.summary
    names, pixel, curves = s["metric_names"], s["pixel"], s["curves"]
    threshold = s["threshold"]
    lines = [
        f"run {s['run_id']} on {s['dataset']} ({s['positive_class']}), split '{s['split']}': "
        f"{s['split_description']}, {s['n_images']} images, checkpoint {s['checkpoint']} (epoch {s['epoch']})"
        + (", predictions averaged over 4 flips" if s.get("flip_tta") else ""),
        "",
        f"Pixel scores at threshold {threshold:g}, summed over images "
        f"(TP {pixel['tp']:,}, FP {pixel['fp']:,}, FN {pixel['fn']:,}, TN {pixel['tn']:,}):",
        f"  {'Pixel F1 (Dice)':<58} {pixel['f1']:.4f}",
        f"  {'Pixel F1 of the all-positive predictor (baseline)':<58} {pixel['f1_all_positive']:.4f}"
        f"   (positive share {pixel['prevalence']:.1%})",
        f"  {'Pixel F1 of the negative class':<58} {pixel['f1_negative']:.4f}",
        f"  {'Pixel precision / recall / IoU':<58} {pixel['precision']:.4f} / {pixel['recall']:.4f} / {pixel['iou']:.4f}",
        f"  {names['roc_auc']:<58} {curves['roc_auc']:.4f}",
        f"  {names['average_precision']:<58} {curves['average_precision']:.4f}"
        f"   ({curves['n_positive']:,} positive, {curves['n_negative']:,} negative pixels)",
        "",
        "Instance scores per post-processing method (mAPs are means over images; counts summed):",
    ]
    methods = s["methods"]
    lines.append(f"  {'':<58} " + " ".join(f"{m:>17}" for m in methods))
    for key in ("dsb_map", "paper_map", "ap50", "precision50", "recall50", "f1_50", "mean_matched_iou"):
        lines.append(f"  {names[key]:<58} " + " ".join(f"{s['instances'][m][key]:>17.4f}" for m in methods))
    lines.append(f"  {'TP / FP / FN objects at IoU > 0.5':<58} " + " ".join(
        f"{s['instances'][m]['tp50']:>5}/{s['instances'][m]['fp50']:>5}/{s['instances'][m]['fn50']:>5}" for m in methods))
    lines.append(f"  {'objects in truth / predicted':<58} " + " ".join(
        f"{s['instances'][m]['n_truth']:>8}/{s['instances'][m]['n_predicted']:>8}" for m in methods))
    if "foreground_restricted" in s:
        lines += ["", "ISBI 2012 challenge scores of the segmented cells (means over images):"]
        for key in RAND_KEYS:
            lines.append(f"  {names[key]:<58} " + " ".join(
                f"{s['foreground_restricted'][m][key]:>17.4f}" for m in methods))
    return "\n".join(lines)
