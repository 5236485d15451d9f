"""Train the starter nuclei model that ships in ``models/starter-nuclei/`` (the Segment page offers it
on a fresh install, and ``--init-from starter-nuclei`` fine-tunes from it).

It is a small U-Net (width 16, depth 3: 0.48 M parameters, about 1 MB as float16) trained on
the shared Kaggle DSB 2018 sample (83 images: fluorescence and brightfield/histology) at
the images' own size, 80% for training and the fixed validation part for the scores written
beside it. Run it from the project root; it needs the real data in ``../shared/data``:

    python scripts/train_starter.py [--epochs 30] [--root ../shared/data/dsb2018]

It writes ``models/starter-nuclei/model.pt`` (a U-Net Lab checkpoint, weights as float16,
read with ``torch.load(weights_only=True)``) and ``models/starter-nuclei/model.json`` (what it
was trained on, the settings, the validation scores, the command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(PROJECT_ROOT.parent / "shared" / "data" / "dsb2018"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "models" / "starter-nuclei"))
    args = parser.parse_args()

    # A scratch registry: the starter model's run is not one of the user's runs.
    scratch = Path(tempfile.mkdtemp(prefix="starter-"))
    os.environ["UNETLAB_CACHE"] = str(scratch / "cache")
    os.environ["UNETLAB_CHECKPOINTS"] = str(scratch / "checkpoints")

    import torch

    from core.checkpoints import load_checkpoint, save_checkpoint
    from core.config import RunConfig
    from core.evaluate import evaluate_run
    from core.runs import Registry
    from core.train import train_run

    config = RunConfig(dataset="dsb2018", root=str(Path(args.root).resolve()), train_fraction=0.8,
                       augmentation="light", epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                       batch_size=8, patch_size=256, base_width=16, depth=3, loss="bce+dice", seed=0,
                       notes="starter nuclei model (scripts/train_starter.py)")
    registry = Registry()
    started = time.time()
    result = train_run(config, registry=registry, show_progress=True)
    if result.status != "finished":
        print(f"training ended {result.status}", file=sys.stderr)
        return 1
    evaluation = evaluate_run(result.run_id, registry=registry, show_progress=True)
    minutes = (time.time() - started) / 60

    payload = load_checkpoint(Path(result.checkpoint_dir) / "best.pt")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stored_config = {**payload["config"], "root": None, "study": None}  # no path of this machine ships
    save_checkpoint(out / "model.pt", {
        "state_dict": {name: tensor.half() if tensor.is_floating_point() else tensor
                       for name, tensor in payload["state_dict"].items()},
        "config": stored_config, "epoch": payload["epoch"], "in_channels": payload["in_channels"],
    })
    summary = evaluation.summary
    components = summary["instances"]["components"]
    watershed = summary["instances"]["watershed"]
    info = {
        "name": "starter-nuclei",
        "title": "Starter nuclei model (DSB 2018 sample)",
        "trained_on": "the Kaggle DSB 2018 stage1_train sample in ../shared/data (83 images, fluorescence and "
                      "brightfield/histology), 80% for training, native image sizes",
        "settings": {key: stored_config[key] for key in ("base_width", "depth", "epochs", "steps_per_epoch",
                                                          "batch_size", "patch_size", "loss", "augmentation",
                                                          "learning_rate", "seed")},
        "best_epoch": int(payload["epoch"]),
        "config": stored_config,
        "validation": {
            "split": summary["split_description"],
            "n_images": summary["n_images"],
            "pixel_f1": summary["pixel"]["f1"],
            "dsb_map_components": components["dsb_map"],
            "dsb_map_watershed": watershed["dsb_map"],
            "ap50_components": components["ap50"],
            "recall50_components": components["recall50"],
        },
        "training_minutes": round(minutes, 1),
        "command": "python scripts/train_starter.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "model.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info["validation"], indent=1))
    print(f"wrote {out / 'model.pt'} ({(out / 'model.pt').stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
