"""Train/validation splits: nesting, fixed validation, determinism, floating point, errors; stacks
split as a gapped contiguous block, grouped folders by whole groups, old runs kept random."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from core.config import RunConfig
from core.datasets import Split, get_spec, load_dataset, split
from core.datasets.split import DEFAULT_GAP, block_starts, permutation
from core.errors import ConfigError, DatasetError
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
    # Changed with the stack splits: "isbi2012" is now a stack (a gapped block caps 0.8 at 20
    # slices), so the random split's rounding is checked on it with strategy="random".
    parts = split("isbi2012", 0.8, seed=0, validation_fraction=0.2, n=30, strategy="random")
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



# --------------------------------------------------------------------------------------
# Stacks: a contiguous validation block, separated from training by a gap
# --------------------------------------------------------------------------------------

STACK_FRACTIONS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
STACKS = [("isbi2012", 30), ("isbi2013", 100), ("epfl", 165), ("ncmir", 50), ("epfl", 16)]


def test_em_stacks_are_declared_stacks_and_the_rest_independent():
    for name in ("isbi2012", "isbi2013", "epfl", "ncmir"):
        assert get_spec(name).ordering == "stack"
    for name in ("synthetic-nuclei", "synthetic-membranes", "synthetic-mitochondria", "dsb2018", "folder"):
        assert get_spec(name).ordering == "independent"


@pytest.mark.parametrize(("name", "n"), STACKS)
def test_no_validation_slice_within_the_gap_of_a_training_slice(name, n):
    n_validation = math.ceil(0.2 * n)
    # Training size depends on (n, fraction) only, never on the seed's block: capped at what a
    # middle block leaves (an end block when the stack has room for fewer than three blocks).
    available = n - n_validation - (2 if len(block_starts(n, n_validation)) > 2 else 1) * DEFAULT_GAP
    for seed in range(7):
        parts = [split(name, fraction, seed, n=n) for fraction in STACK_FRACTIONS]
        validation = parts[0].validation
        assert validation == list(range(validation[0], validation[0] + n_validation))  # contiguous
        for fraction, part in zip(STACK_FRACTIONS, parts):
            assert part.kind == "block" and part.gap == DEFAULT_GAP and part.validation == validation
            assert len(part.train) == min(math.ceil(fraction * n - 1e-9), available)
            assert part.capped == (math.ceil(fraction * n - 1e-9) > available)
            distance = min(abs(t - v) for t in part.train for v in part.validation)
            assert distance > DEFAULT_GAP, (name, n, seed, fraction, distance)
        for smaller, larger in zip(parts, parts[1:]):
            assert set(smaller.train) <= set(larger.train)


def test_seeds_vary_the_block_and_the_first_seeds_cover_the_stack():
    blocks = [split("isbi2012", 0.5, seed, n=30) for seed in range(5)]
    assert [b.block for b in blocks] == [(k, 5) for k in range(5)]
    assert sorted(i for b in blocks for i in b.validation) == list(range(30))  # disjoint, covering
    assert blocks[0].validation == [0, 1, 2, 3, 4, 5] and blocks[4].validation == list(range(24, 30))
    assert split("isbi2012", 0.5, 5, n=30).validation == blocks[0].validation  # seed mod 5
    assert split("isbi2012", 0.5, 5, n=30).train != blocks[0].train  # the seed still draws training
    assert block_starts(24, 5) == [0, 6, 13, 19]  # evenly spaced, never overlapping


def test_largest_fractions_on_a_stack_are_capped_and_say_so():
    at_70, at_80 = split("isbi2012", 0.7, 2, n=30), split("isbi2012", 0.8, 2, n=30)
    assert len(at_70.train) == len(at_80.train) == 20  # 30 - 6 validation - 2 x 2 gap
    assert at_80.capped and "capped at 20, not ceil(0.8 x 30) = 24" in at_80.description
    assert not split("isbi2012", 0.5, 2, n=30).capped


def test_stack_description_names_the_strategy_range_and_gap():
    text = split("isbi2012", 0.5, 2, n=30).description
    assert text.startswith("contiguous block with a gap of 2 slices (seed 2 picks block 3 of 5)")
    assert "slices #12-#17 of 30 validate" in text and "#10-#11, #18-#19" in text
    assert "15 training slices" in text


def test_a_stack_too_short_for_a_gapped_block_is_a_clear_error():
    with pytest.raises(DatasetError, match="isbi2012 has 5 slices: too few for a contiguous validation block"):
        split("isbi2012", 0.5, n=5)
    assert len(split("isbi2012", 0.5, n=5, strategy="random").train) == 3  # the old, leaky split still works


def test_random_strategy_on_a_stack_is_the_split_stored_runs_used():
    """strategy='random' must keep reproducing splits cut before stacks were handled."""
    order = permutation("isbi2012", 7, 30)
    parts = split("isbi2012", 0.5, 7, n=30, strategy="random")
    assert parts.train == sorted(int(i) for i in order[:15])
    assert parts.validation == sorted(int(i) for i in order[24:])
    assert parts.kind == "random" and parts.description.startswith("random split (seed 7)")


def test_independent_sets_split_as_before_under_auto():
    for n in (24, 83):
        assert split("synthetic-nuclei", 0.5, 3, n=n) == split("synthetic-nuclei", 0.5, 3, n=n, strategy="random")
    assert split("some-set", 0.5, 1, n=40, strategy="block").kind == "block"  # a folder of slices can opt in


def test_real_isbi2012_sample_splits_as_a_stack(isbi2012_root):
    dataset = load_dataset("isbi2012", isbi2012_root)
    for seed in range(3):
        parts = [split(dataset, fraction, seed) for fraction in STACK_FRACTIONS]
        assert parts[0] == split("isbi2012", 0.1, seed, n=len(dataset))
        for part in parts:
            assert part.kind == "block"
            assert min(abs(t - v) for t in part.train for v in part.validation) > DEFAULT_GAP
        assert all(set(a.train) <= set(b.train) for a, b in zip(parts, parts[1:]))


# --------------------------------------------------------------------------------------
# Grouped folders: whole groups in each part
# --------------------------------------------------------------------------------------

GROUP_SIZES = {"slideA": 3, "slideB": 2, "slideC": 4, "slideD": 1, "slideE": 3, "slideF": 2, "slideG": 5}
PATTERN = r"^(slide[A-Z])_"


@pytest.fixture
def grouped_folder(tmp_path):
    """A folder dataset of 20 tiny PNG pairs named slideX_NN.png, in 7 groups of 1 to 5 images."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for group, size in GROUP_SIZES.items():
        for number in range(1, size + 1):
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 8:20] = 255
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "images" / f"{group}_{number:02d}.png")
            Image.fromarray(mask).save(tmp_path / "masks" / f"{group}_{number:02d}.png")
    return tmp_path


def _group(name: str) -> str:
    return name.split("_")[0]


def test_grouped_folder_never_splits_a_group(grouped_folder):
    dataset = load_dataset("folder", grouped_folder)
    assert len(dataset) == 20
    for seed in range(8):
        parts = [split(dataset, fraction, seed, group_pattern=PATTERN) for fraction in STACK_FRACTIONS]
        for fraction, part in zip(STACK_FRACTIONS, parts):
            train_groups = {_group(dataset.names[i]) for i in part.train}
            validation_groups = {_group(dataset.names[i]) for i in part.validation}
            assert part.kind == "groups" and not train_groups & validation_groups
            # Whole groups: every image of a group in a part is there.
            for groups, indices in ((train_groups, part.train), (validation_groups, part.validation)):
                assert sum(GROUP_SIZES[g] for g in groups) == len(indices)
            assert set(part.train_groups) == train_groups and set(part.validation_groups) == validation_groups
            assert len(part.validation) >= math.ceil(0.2 * 20)
            assert len(part.train) >= math.ceil(fraction * 20 - 1e-9) or part.capped
            assert part.validation == parts[0].validation
        for smaller, larger in zip(parts, parts[1:]):
            assert set(smaller.train) <= set(larger.train)


def test_group_split_description_and_determinism(grouped_folder):
    dataset = load_dataset("folder", grouped_folder)
    parts = split(dataset, 0.5, 1, group_pattern=PATTERN)
    assert parts == split("folder", 0.5, 1, n=20, names=dataset.names, group_pattern=PATTERN)
    text = parts.description
    assert text.startswith(f"split by group (pattern {PATTERN!r}, seed 1): ")
    assert f"of 7 groups validate ({', '.join(repr(g) for g in parts.validation_groups)};" in text
    # Without a capture group the whole match names the group; here the same groups.
    assert split(dataset, 0.5, 1, group_pattern=r"^slide[A-Z]").validation == parts.validation


@pytest.mark.parametrize(
    ("pattern", "strategy", "message"),
    [
        (r"^(slide[AB])_", "auto", "finds no group in 15 of 20 image names ('slideC_01'"),
        (r"^(slide)", "auto", "puts all 20 images of folder in one group ('slide')"),
        (r"(", "auto", "not a valid regular expression"),
        (PATTERN, "random", "split strategy is 'random'"),
        (None, "groups", "needs a group_pattern"),
        (None, "sideways", "unknown split strategy 'sideways'"),
    ],
)
def test_bad_group_settings_are_clear_errors(grouped_folder, pattern, strategy, message):
    dataset = load_dataset("folder", grouped_folder)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split(dataset, 0.5, group_pattern=pattern, strategy=strategy)


def test_training_and_evaluation_use_the_runs_group_split(grouped_folder):
    from core.evaluate import evaluation_images
    from core.train import prepare_data

    config = RunConfig(dataset="folder", root=str(grouped_folder), group_pattern=PATTERN, train_fraction=0.4,
                       seed=3, patch_size=16).validate()
    expected = split(load_dataset("folder", grouped_folder), 0.4, 3, group_pattern=PATTERN)
    data = prepare_data(config)
    assert (data.train_indices, data.validation_indices) == (expected.train, expected.validation)
    registry = SimpleNamespace(get_run=lambda run_id: SimpleNamespace(config=config))
    dataset, indices, description = evaluation_images("run", "val", registry)
    assert indices == expected.validation and description == expected.description


# --------------------------------------------------------------------------------------
# The run's settings: split_strategy and group_pattern; old runs stay random
# --------------------------------------------------------------------------------------


def test_new_configs_are_auto_and_old_stored_configs_load_as_random():
    assert RunConfig().split_strategy == "auto" and RunConfig().group_pattern is None
    stored_before = {key: value for key, value in RunConfig(dataset="isbi2012").to_dict().items()
                     if key not in ("split_strategy", "group_pattern")}
    old = RunConfig.from_dict(stored_before)
    assert old.split_strategy == "random" and old.group_pattern is None and not old.extra
    assert RunConfig.from_dict(RunConfig().to_dict()).split_strategy == "auto"  # new runs round-trip
    assert RunConfig.from_dict(RunConfig(split_strategy="block").to_dict()).split_strategy == "block"
    # The old run's validation images are the random split it was trained and scored on.
    parts = split("isbi2012", old.train_fraction, old.seed, old.validation_fraction, n=30,
                  strategy=old.split_strategy, group_pattern=old.group_pattern)
    assert parts == split("isbi2012", 0.5, 0, n=30, strategy="random")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"group_pattern": "slide("}, "group_pattern 'slide(' is not a valid regular expression"),
        ({"group_pattern": ""}, "group_pattern must be a non-empty regular expression"),
        ({"split_strategy": "blocks"}, "split_strategy must be one of"),
        ({"split_strategy": "groups"}, "split_strategy 'groups' needs a group_pattern"),
        ({"split_strategy": "random", "group_pattern": PATTERN}, "is set but split_strategy is 'random'"),
    ],
)
def test_bad_split_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RunConfig(**settings).validate()


def test_good_split_settings_validate():
    for settings in ({}, {"split_strategy": "random"}, {"split_strategy": "block"},
                     {"group_pattern": PATTERN}, {"split_strategy": "groups", "group_pattern": r"^\w+?-"}):
        RunConfig(**settings).validate()
