"""What the instance-aware targets cost per training step, against the mask target of before them.

    python -m benchmarks.target_cost [--dataset dsb2018 --root ../shared/data/dsb2018] [--steps 30]

Times whole training steps (patches cut and augmented, targets built, forward, loss, backward,
Adam) on the same images, alternating the variants in rounds so that machine noise hits all of
them alike, and prints the median seconds per step and the ratio to the mask target of the
code before issue #14 (``core/train.py`` at commit b8f36a6, read from git when available).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "mask": {},
    "mask, foreground sampling 0.5": dict(foreground_sampling=0.5),
    "mask, border weights": dict(border_weight=10.0),
    "mask+contour": dict(target="mask+contour"),
    "mask+contour, border weights": dict(target="mask+contour", border_weight=10.0),
}
BEFORE = "b8f36a6"


def old_train_module():
    """``core/train.py`` as it was before the instance-aware targets, or None outside a git checkout."""
    try:
        source = subprocess.run(["git", "show", f"{BEFORE}:core/train.py"], capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "train_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("train_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_before"] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def time_steps(step_once, steps: int) -> float:
    """Median seconds of ``steps`` calls after one warm-up call."""
    step_once()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step_once()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic-nuclei")
    parser.add_argument("--root")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("UNETLAB_CACHE", "/tmp/unetlab-bench/cache")
    import torch

    from core.config import RunConfig
    from core import train

    torch.set_num_threads(args.threads)
    base = RunConfig(dataset=args.dataset, root=args.root, train_fraction=0.8, augmentation="light", batch_size=8,
                     patch_size=128, base_width=16, depth=4, loss="bce+dice", steps_per_epoch=10_000)

    def stepper(config: RunConfig, data, old=None):
        trainer = train.build_trainer(config, data.in_channels)
        if old is not None:
            batches = old.patch_batches(data.train_images, data.train_masks, config, data.patch_shape, 1)
        else:
            batches = train.patch_batches(data, config, 1)

        def step_once() -> None:
            item = next(batches)
            images, targets = item[0], item[1]
            weights = item[2] if len(item) > 2 and item[2] is not None else None
            inputs = torch.from_numpy(images).contiguous(memory_format=trainer.memory_format)
            with train.autocast_context(trainer.device, trainer.precision):
                logits = trainer.model(inputs)
            loss = train.segmentation_loss(logits.float(), torch.from_numpy(targets), config.loss,
                                           None if weights is None else torch.from_numpy(weights))
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
        return step_once

    steppers = {}
    old = old_train_module()
    data = train.prepare_data(dataclasses.replace(base, foreground_sampling=0.5, border_weight=1.0))
    if old is not None:
        steppers[f"mask, before #14 ({BEFORE})"] = stepper(base, data, old)
    for name, settings in VARIANTS.items():
        steppers[name] = stepper(dataclasses.replace(base, **settings), data)
    results: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, step_once in steppers.items():
            results[name].append(time_steps(step_once, args.steps))
    reference = statistics.median(results.get(f"mask, before #14 ({BEFORE})") or results["mask"])
    print(f"{args.dataset}: batch 8 of 128x128 patches, width 16, depth 4, light augmentation, "
          f"{args.threads} threads; median of {args.rounds} rounds x {args.steps} steps")
    print("| variant | seconds per step | vs the mask target before #14 |")
    print("|---|---|---|")
    for name, values in results.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.3f} | {seconds / reference:.2f}x |")


if __name__ == "__main__":
    main()
