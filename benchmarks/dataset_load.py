"""First (decoding) vs cached load time of each dataset (``python -m benchmarks.dataset_load``).

Uses a temporary cache folder, so the project's ``cache/`` is left alone. Real sets are taken
from ``../shared/data`` where present; the synthetic sets need no files. Also times the
float32 conversion of one indexed sample, which the training loop pays on every access.

Options: ``--repeats N`` (cached loads, best of N; default 3), ``--only NAME`` (repeatable).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from core.paths import shared_data_dir

CANDIDATES = [
    ("synthetic-nuclei", None, None),
    ("synthetic-membranes", None, None),
    ("synthetic-mitochondria", None, None),
    ("isbi2012", "isbi2012", None),
    ("epfl", "epfl", None),
    ("epfl", "epfl", 512),
    ("dsb2018", "dsb2018", None),
    ("dsb2018", "dsb2018", 128),
]


def time_call(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", action="append", help="dataset name to time (repeatable)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unetlab-bench-") as cache:
        os.environ["UNETLAB_CACHE"] = cache
        from core.datasets import load_dataset
        from core.datasets.cache import datasets_cache_dir

        shared = shared_data_dir()
        print(f"{'dataset':<24} {'size':>7} {'images':>6} {'first s':>8} {'cached s':>9} {'speed-up':>8} "
              f"{'cache MB':>9} {'getitem ms':>10}")
        for name, folder, size in CANDIDATES:
            if args.only and name not in args.only:
                continue
            root = None
            if folder is not None:
                if shared is None or not (shared / folder).is_dir():
                    print(f"{name:<24} skipped: ../shared/data/{folder} is absent")
                    continue
                root = shared / folder
            first, dataset = time_call(lambda: load_dataset(name, root, size=size))
            cached = min(time_call(lambda: load_dataset(name, root, size=size))[0] for _ in range(args.repeats))
            entries = [path for path in datasets_cache_dir().glob(f"{name}--train--*") if path.suffix == ".npz"]
            megabytes = sum(path.stat().st_size for path in entries if ("native" if size is None else f"{size}x{size}") in path.name) / 1e6
            start = time.perf_counter()
            for index in range(len(dataset)):
                dataset[index]
            getitem = (time.perf_counter() - start) / len(dataset) * 1000
            label = "native" if size is None else f"{size}"
            print(f"{name:<24} {label:>7} {len(dataset):>6} {first:>8.2f} {cached:>9.3f} {first / cached:>7.0f}x "
                  f"{megabytes:>9.1f} {getitem:>10.2f}")


if __name__ == "__main__":
    main()
