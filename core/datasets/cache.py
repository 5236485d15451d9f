"""Decoded-array cache under ``cache_dir()/datasets/``.

An entry is one uncompressed ``.npz`` per (dataset, split, data folder, size). Its key hashes the
loader version, the size option and the path, byte size and modification time of every
source file read, so touching or changing any of them makes a new key; the stale entry for
the same (dataset, split, folder, size) is then deleted. Entries are written to a temporary file
and renamed, so a crash never leaves a half-written entry, and read with
``allow_pickle=False``. Uncompressed, because a cached load should cost little more than a
file copy (benchmarks/dataset_load.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from core.datasets.base import RawData
from core.paths import cache_dir

CACHE_FORMAT = 1


def datasets_cache_dir() -> Path:
    path = cache_dir() / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(payload: object, length: int) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:length]


def entry_path(
    name: str, split: str, size: tuple[int, int] | None, files: list[Path], version: int
) -> Path:
    """Where the entry for these exact source files lives."""
    stats = []
    for path in files:
        stat = path.stat()
        stats.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    size_label = "native" if size is None else f"{size[0]}x{size[1]}"
    # Entries are grouped by the folder their files share (not the root as typed), so
    # "dsb2018/" and "dsb2018/stage1_train/" share one entry; a new key replaces its group's old one.
    folder = os.path.commonpath([item[0] for item in stats]) if stats else None
    place = _digest([folder], 8)
    key = _digest({"format": CACHE_FORMAT, "loader": version, "size": size_label, "files": stats}, 16)
    return datasets_cache_dir() / f"{name}--{split}--{place}--{size_label}--{key}.npz"


def load_entry(path: Path) -> RawData | None:
    """The cached arrays, or None when there is no usable entry (a damaged one is deleted)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            count = meta["count"]
            images = [archive[f"image_{i}"] for i in range(count)]
            masks = [archive[f"mask_{i}"] for i in range(count)] if meta["has_masks"] else None
            instances = [archive[f"instances_{i}"] for i in range(count)] if meta["has_instances"] else None
        return RawData(images=images, masks=masks, instances=instances, names=meta["names"], checks=meta["checks"],
                       warnings=meta.get("warnings", []))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        path.unlink(missing_ok=True)
        return None


def save_entry(path: Path, raw: RawData) -> None:
    """Write ``raw`` atomically to ``path`` and delete older entries for the same data."""
    meta = {
        "count": len(raw.images),
        "names": raw.names,
        "checks": raw.checks,
        "warnings": raw.warnings,
        "has_masks": raw.masks is not None,
        "has_instances": raw.instances is not None,
    }
    arrays = {"meta": np.array(json.dumps(meta))}
    for i, image in enumerate(raw.images):
        arrays[f"image_{i}"] = image
        if raw.masks is not None:
            arrays[f"mask_{i}"] = raw.masks[i]
        if raw.instances is not None:
            arrays[f"instances_{i}"] = raw.instances[i]
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    prefix = path.name.rsplit("--", 1)[0] + "--"
    for stale in path.parent.glob(f"{prefix}*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)


def clear_cache() -> int:
    """Delete every cached dataset entry; returns how many were removed."""
    removed = 0
    for entry in datasets_cache_dir().glob("*.npz"):
        entry.unlink(missing_ok=True)
        removed += 1
    return removed
