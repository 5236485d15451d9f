"""The home of the folders the user registered as datasets (by path, on the Train page).

The list is a JSON file beside the run registry (:func:`user_datasets_path`), written
atomically so that a crash mid-write never loses the folders already registered. A folder
is added only once its loader has read it (see :func:`register_user_dataset`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import DatasetError
from core.fileio import atomic_write_text
from core.paths import cache_dir


@dataclass
class UserDataset:
    """A dataset the user registered by giving its folder.

    ``dataset`` is the loader's name (``folder`` for images/ + masks/, or a named dataset's
    own layout); ``root`` the folder; ``label`` what the pages show.
    """

    label: str
    dataset: str
    root: str
    added: float = field(default_factory=time.time)


def user_datasets_path() -> Path:
    """The JSON file listing registered folders (beside the run registry)."""
    return cache_dir() / "user_datasets.json"


def load_user_datasets(path: Path | None = None) -> list[UserDataset]:
    """The registered folders, oldest first.

    A list that cannot be read (damaged JSON, entries of the wrong shape) is never treated
    as empty and overwritten: it is renamed to ``user_datasets.json.damaged-<time>`` beside
    it, so the paths it held can still be read, and :func:`damaged_lists` reports it.
    """
    path = path or user_datasets_path()
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise TypeError(f"expected a list of folders, found a {type(entries).__name__}")
        folders = [UserDataset(**entry) for entry in entries]
        if not all(isinstance(f.root, str) and isinstance(f.dataset, str) and isinstance(f.label, str) for f in folders):
            raise TypeError("an entry's label, dataset or root is not text")
        return folders
    except (ValueError, TypeError, OSError):
        stamp, number = time.strftime("%Y%m%d-%H%M%S"), 0
        kept = path.with_name(f"{path.name}.damaged-{stamp}")
        while kept.exists():  # two damaged lists within a second: keep both
            number += 1
            kept = path.with_name(f"{path.name}.damaged-{stamp}-{number}")
        path.replace(kept)
        return []


def damaged_lists(path: Path | None = None) -> list[Path]:
    """Damaged lists of registered folders kept aside by :func:`load_user_datasets`, oldest first."""
    path = path or user_datasets_path()
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


def damaged_list_message(path: Path | None = None) -> str | None:
    """A sentence for the pages when a damaged list was kept aside, else None."""
    kept = damaged_lists(path)
    if not kept:
        return None
    return (f"The list of registered folders was damaged and was kept aside as {kept[-1]} "
            f"({len(kept)} such file(s)); the folders it named must be registered again (the file shows their "
            "paths). Delete the damaged file(s) to hide this note.")


def register_user_dataset(dataset: str, root: str | Path, label: str | None = None,
                          path: Path | None = None) -> UserDataset:
    """Check that ``root`` loads as ``dataset`` and add it to the registered folders.

    Registering the same folder with the same loader again replaces its entry.

    Raises
    ------
    DatasetError
        The loader's own message when the folder does not load (missing folder, wrong
        layout, unreadable file, images without masks...).
    """
    from core.datasets import load_dataset

    root_path = Path(root).expanduser()
    if not str(root).strip():
        raise DatasetError("give the path of the dataset's folder")
    if not root_path.is_dir():
        raise DatasetError(f"{root_path}: no such folder on this machine")
    root_path = root_path.resolve()
    loaded = load_dataset(dataset, str(root_path), split="train")
    if len(loaded) < 2:
        raise DatasetError(f"{root_path}: {len(loaded)} labelled image(s); a training run needs at least 2 "
                           "(some for training, some for validation)")
    path = path or user_datasets_path()
    entries = [entry for entry in load_user_datasets(path)
               if not (entry.dataset == dataset and entry.root == str(root_path))]
    entry = UserDataset(label=label or f"{dataset}: {root_path.name}", dataset=dataset, root=str(root_path))
    entries.append(entry)
    atomic_write_text(path, json.dumps([asdict(e) for e in entries], indent=1))
    return entry
