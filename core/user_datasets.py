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
    """The registered folders, oldest first (an unreadable list counts as empty)."""
    path = path or user_datasets_path()
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
        return [UserDataset(**entry) for entry in entries]
    except (ValueError, TypeError):
        return []


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
