"""Nested train/validation splits: nesting, fixed validation, determinism, floating point, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.datasets import Split, load_dataset, split
from core.errors import DatasetError
from core.paths import PROJECT_ROOT

FRACTIONS = [0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.75, 0.8]


@pytest.mark.parametrize("n", [5, 10, 24, 30, 83, 165])
def test_training_sets_nest_and_validation_is_fixed(n):
    parts = [split("some-set", fraction, seed=3, n=n) for fraction in FRACTIONS if fraction * n >= 0.5]
    validation = parts[0].validation
    for smaller, larger in zip(parts, parts[1:]):
        assert set(smaller.train) <= set(larger.train)
        assert larger.validation == validation
    for part in parts:
        assert not set(part.train) & set(part.validation)
        assert all(0 <= i < n for i in part.train + part.validation)


def test_sizes_round_up_and_respect_floating_point():
    parts = split("isbi2012", 0.8, seed=0, validation_fraction=0.2, n=30)
    assert (len(parts.train), len(parts.validation)) == (24, 6)  # 0.8 * 30 = 24.000000000000004
    assert sorted(parts.train + parts.validation) == list(range(30))
    assert len(split("x", 0.1, n=24).train) == 3  # ceil(2.4): a 10% run on a synthetic set has >= 2 images
    assert len(split("x", 0.1, n=24).validation) == 5  # ceil(0.2 * 24)
    assert len(split("x", 0.3, validation_fraction=0.1, n=10).train) == 3  # 0.3 * 10 = 3.0000000000000004


def test_largest_fraction_takes_what_validation_leaves():
    # 0.8 * 24 = 19.2 and 0.2 * 24 = 4.8 both round up (20 + 5 > 24): training is capped, not overlapping.
    parts = split("x", 0.8, n=24)
    assert (len(parts.train), len(parts.validation)) == (19, 5)
    assert not set(parts.train) & set(parts.validation)
    assert set(split("x", 0.7, n=24).train) <= set(parts.train)


def test_validation_has_at_least_one_item():
    parts = split("x", 0.5, validation_fraction=0.01, n=10)
    assert len(parts.validation) == 1 and len(parts.train) == 5


def test_deterministic_and_seeded():
    assert split("a", 0.5, seed=1, n=40) == split("a", 0.5, seed=1, n=40)
    assert split("a", 0.5, seed=1, n=40).train != split("a", 0.5, seed=2, n=40).train
    assert split("a", 0.5, seed=1, n=40).train != split("b", 0.5, seed=1, n=40).train


def test_same_split_in_other_processes():
    """The permutation must not depend on Python's per-process randomised ``hash``."""
    code = "import json; from core.datasets import split; s = split('isbi2012', 0.5, 7, n=30); print(json.dumps([s.train, s.validation]))"
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True)
        outputs.add(result.stdout.strip())
    here = split("isbi2012", 0.5, 7, n=30)
    assert outputs == {json.dumps([here.train, here.validation])}


def test_split_of_a_dataset_matches_split_of_its_name():
    dataset = load_dataset("synthetic-nuclei")
    parts = split(dataset, 0.5, seed=0)
    assert isinstance(parts, Split)
    assert parts == split("synthetic-nuclei", 0.5, seed=0, n=len(dataset))
    assert (parts.seed, parts.train_fraction, parts.validation_fraction) == (0, 0.5, 0.2)
    assert parts.train == sorted(parts.train) and len(parts.train) == 12


@pytest.mark.parametrize(
    ("train_fraction", "validation_fraction", "n", "message"),
    [
        (0.0, 0.2, 10, "train_fraction must be in (0, 0.8]"),
        (-0.1, 0.2, 10, "train_fraction"),
        (0.81, 0.2, 10, "train_fraction must be in (0, 0.8]"),
        (0.5, 0.0, 10, "validation_fraction must be in (0, 1)"),
        (0.5, 1.0, 10, "validation_fraction must be in (0, 1)"),
        (0.5, 0.2, 1, "too few"),
        (0.5, 0.2, 0, "too few"),
    ],
)
def test_bad_fractions_and_sizes_are_clear_errors(train_fraction, validation_fraction, n, message):
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        split("x", train_fraction, validation_fraction=validation_fraction, n=n)


def test_name_needs_n_and_n_must_agree():
    with pytest.raises(DatasetError, match="needs n"):
        split("x", 0.5)
    with pytest.raises(DatasetError, match="n=5 but synthetic-nuclei has 24"):
        split(load_dataset("synthetic-nuclei"), 0.5, n=5)


def test_official_test_split_is_never_split(isbi2012_root):
    test_volume = load_dataset("isbi2012", isbi2012_root, split="test")
    with pytest.raises(DatasetError, match="held-out split"):
        split(test_volume, 0.5)
