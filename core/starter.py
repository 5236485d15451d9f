"""Models that ship with U-Net Lab, so a fresh install can segment before any training.

Each lives in ``models/<name>/``: ``model.pt`` (a U-Net Lab checkpoint, read with
``torch.load(weights_only=True)`` like any other) and ``model.json`` (what it was trained on,
its settings and validation scores, the command that made it). ``scripts/train_starter.py``
trains the nuclei one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.paths import PROJECT_ROOT

#: Where shipped models live.
MODELS_DIR = PROJECT_ROOT / "models"


@dataclass(frozen=True)
class StarterModel:
    """A shipped model: its name, checkpoint file and the facts in its ``model.json``."""

    name: str
    checkpoint: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return str(self.info.get("title", self.name))

    @property
    def config(self) -> RunConfig:
        """The settings it was trained with (stored in ``model.json`` as in its checkpoint)."""
        return RunConfig.from_dict(self.info.get("config", {}))

    def describe(self) -> str:
        """One sentence: what it was trained on and how well it did on its validation images."""
        scores = self.info.get("validation", {})
        parts = [f"{self.title}: trained on {self.info.get('trained_on', 'unknown data')}"]
        if scores:
            parts.append(f"on its {scores.get('n_images', '?')} validation images: pixel F1 (Dice) at threshold "
                         f"0.5 = {scores.get('pixel_f1', float('nan')):.3f}, DSB mAP (IoU 0.50 to 0.95, "
                         f"TP/(TP+FP+FN)) = {scores.get('dsb_map_components', float('nan')):.3f} with 'components', "
                         f"{scores.get('dsb_map_watershed', float('nan')):.3f} with 'watershed'")
        return "; ".join(parts)


def starter_models(folder: Path | None = None) -> list[StarterModel]:
    """The shipped models (those with both files), by name."""
    folder = MODELS_DIR if folder is None else Path(folder)
    models = []
    for checkpoint in sorted(folder.glob("*/model.pt")):
        try:
            info = json.loads((checkpoint.parent / "model.json").read_text())
        except (OSError, ValueError):
            continue  # an incomplete model folder is not offered
        models.append(StarterModel(name=checkpoint.parent.name, checkpoint=checkpoint, info=info))
    return models


def find_starter(name: str, folder: Path | None = None) -> StarterModel | None:
    """The shipped model called ``name``, or None."""
    return next((model for model in starter_models(folder) if model.name == name), None)


@dataclass(frozen=True)
class ModelChoice:
    """One entry of a model picker: a trained run's best checkpoint or a shipped model."""

    key: str  # a run id, or "starter:<name>"
    label: str
    checkpoint: Path
    config: RunConfig
    note: str  # where it comes from, for the caption


def model_choices(runs: list[Any], folder: Path | None = None) -> list[ModelChoice]:
    """Shipped models first (they work on a fresh install), then every run with a ``best.pt``.

    ``runs`` are registry records (``core.runs.RunRecord``), newest first.
    """
    choices = [ModelChoice(key=f"starter:{model.name}", label=f"{model.title} (shipped)",
                           checkpoint=model.checkpoint, config=model.config, note=model.describe())
               for model in starter_models(folder)]
    for run in runs:
        if run.best_checkpoint.is_file():
            choices.append(ModelChoice(key=run.id, label=f"{run.config.label()} ({run.id[-6:]}, {run.status})",
                                       checkpoint=run.best_checkpoint, config=run.config,
                                       note=f"model from run {run.id}"))
    return choices
