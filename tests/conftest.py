"""Shared fixtures: every test writes its registry, cache and checkpoints to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.paths import shared_data_dir


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Point the cache and checkpoint folders at fresh temporary folders."""
    base = tmp_path_factory.mktemp("unetlab")
    monkeypatch.setenv("UNETLAB_CACHE", str(base / "cache"))
    monkeypatch.setenv("UNETLAB_CHECKPOINTS", str(base / "checkpoints"))
    return base


def _shared(name: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"real data sample ../shared/data/{name} is absent on this machine")
    return root / name


@pytest.fixture
def isbi2012_root() -> Path:
    return _shared("isbi2012")


@pytest.fixture
def dsb2018_root() -> Path:
    return _shared("dsb2018")


@pytest.fixture
def epfl_root() -> Path:
    return _shared("epfl")
