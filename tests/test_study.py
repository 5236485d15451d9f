"""Studies: grid expansion, presets, skip/resume logic, the noise note, and tiny studies run
end to end through ``python -m core study`` (interrupted by SIGKILL and resumed)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import ConfigError, RunConfig
from core.errors import UNetLabError
from core.metrics import METRIC_NAMES
from core.paths import PROJECT_ROOT
from core.report import NOT_AVAILABLE, PAPER_TABLE1, grid_rows, grid_table, is_membrane_dataset, table1
from core.runs import Registry, process_alive
from core.stats import CellStats, format_cell, within_seed_noise
from core.study import (
    PAPER_EPOCHS_GUESS, RunState, StudyDefinition, StudyGrid, check_study_name, configs_for_grid, decide_action,
    estimate_eta, grid_configs, load_study, parse_augmentations, parse_fractions, parse_roots, parse_seeds,
    parse_budgets, plan_study, preset_settings, run_identity, save_study, study_names, validate_grid,
)

TINY = ["--epochs", "1", "--batch-size", "2", "--patch-size", "64", "--width", "8", "--depth", "3",
        "--tile-size", "256"]


# --------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------


def test_grid_expansion_seeds_outermost_with_shared_settings():
    grid = StudyGrid(datasets=["synthetic-nuclei", "synthetic-membranes"], fractions=[0.1, 0.5],
                     augmentations=["none", "heavy"], seeds=[3, 1], overrides={"epochs": 2, "patch_size": 64})
    configs = grid_configs(grid, "s")
    assert len(configs) == 2 * 2 * 2 * 2
    assert [c.seed for c in configs] == [3] * 8 + [1] * 8
    assert [(c.dataset, c.train_fraction, c.augmentation) for c in configs[:4]] == [
        ("synthetic-nuclei", 0.1, "none"), ("synthetic-nuclei", 0.1, "heavy"),
        ("synthetic-nuclei", 0.5, "none"), ("synthetic-nuclei", 0.5, "heavy")]
    assert all(c.study == "s" and c.epochs == 2 and c.patch_size == 64 and c.base_width == 16 for c in configs)
    assert len({run_identity(c) for c in configs}) == len(configs)
    # The study name, notes and extra are not part of a cell's identity; every setting is.
    config = configs[0]
    same = RunConfig.from_dict({**config.to_dict(), "study": "other", "notes": "x"})
    assert run_identity(same) == run_identity(config)
    assert run_identity(RunConfig.from_dict({**config.to_dict(), "epochs": 3})) != run_identity(config)


def test_presets_map_each_dataset_and_yield_to_overrides():
    assert preset_settings("paper", "dsb2018")["image_size"] == 128
    for name in ("isbi2012", "isbi2013", "ncmir", "epfl"):
        assert preset_settings("paper", name)["image_size"] == 512
        assert preset_settings("default", name)["image_size"] == 512
    paper = preset_settings("paper", "isbi2012")
    assert (paper["loss"], paper["optimizer"], paper["base_width"], paper["epochs"]) == ("bce", "adam", 64, PAPER_EPOCHS_GUESS)
    default = preset_settings("default", "synthetic-nuclei")
    assert default == {"image_size": None, "base_width": 16, "precision": "auto", "steps_per_epoch": 25}
    grid = StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.5], augmentations=["none"], preset="paper",
                     overrides={"epochs": 5, "image_size": 96})
    (config,) = grid_configs(grid, "s")
    assert (config.epochs, config.base_width, config.image_size) == (5, 64, 96)
    with pytest.raises(UNetLabError, match="unknown preset"):
        preset_settings("fast", "isbi2012")
    with pytest.raises(UNetLabError, match="train_fraction"):
        grid_configs(StudyGrid(datasets=["synthetic-nuclei"], overrides={"train_fraction": 0.5}), "s")


def test_budgets_are_a_grid_axis_that_sets_each_runs_epochs():
    grid = StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.5], augmentations=["none", "heavy"], seeds=[0],
                     budgets=[50, 150], overrides={"steps_per_epoch": 25, "early_stopping_patience": 3})
    configs = grid_configs(grid, "b")
    assert [(c.epochs, c.augmentation) for c in configs] == [(2, "none"), (2, "heavy"), (6, "none"), (6, "heavy")]
    assert all(c.steps_per_epoch == 25 and c.early_stopping_patience == 3 for c in configs)
    assert len({run_identity(c) for c in configs}) == 4
    assert parse_budgets("300, 900,300") == [300, 900]
    for text, message in (("x", "not a whole number"), ("0", "at least 1"), ("", "at least one value")):
        with pytest.raises(UNetLabError, match=message):
            parse_budgets(text)
    with pytest.raises(UNetLabError, match="multiple of 25"):
        grid_configs(StudyGrid(datasets=["synthetic-nuclei"], budgets=[40], overrides={"steps_per_epoch": 25}), "b")
    with pytest.raises(UNetLabError, match="leave out --epochs"):
        grid_configs(StudyGrid(datasets=["synthetic-nuclei"], budgets=[50], overrides={"epochs": 3}), "b")
    # A definition stored before budgets existed still loads, with no budget axis.
    stored = StudyDefinition(name="old", grids=[StudyGrid(datasets=["synthetic-nuclei"])]).to_dict()
    del stored["grids"][0]["budgets"]
    assert StudyDefinition.from_dict(stored).grids[0].budgets == []


def test_parsers_refuse_bad_input_clearly():
    assert parse_roots(" isbi2012=../a , dsb2018=/b ") == {"isbi2012": "../a", "dsb2018": "/b"}
    assert parse_fractions("0.1, 20%,0.1") == [0.1, 0.2]
    assert parse_augmentations("none,heavy") == ["none", "heavy"]
    for call, message in ((lambda: parse_roots("isbi2012"), "dataset=path"),
                          (lambda: parse_roots("a=1,a=2"), "twice"),
                          (lambda: parse_fractions("0.1,ten"), "'ten' is not a number"),
                          (lambda: parse_fractions("1.5"), r"\(0, 1\]"),
                          (lambda: parse_augmentations("none,extreme"), "extreme"),
                          (lambda: check_study_name("../x"), "study name")):
        with pytest.raises(UNetLabError, match=message):
            call()


def test_configs_for_grid_cover_every_combination_in_order():
    base = RunConfig(epochs=3, base_width=8)
    configs = configs_for_grid(base, [0.1, 0.5], ["none", "heavy"], [0, 1, 2], study="s")
    assert len(configs) == 12
    assert [(c.train_fraction, c.augmentation, c.seed) for c in configs[:4]] == [
        (0.1, "none", 0), (0.1, "none", 1), (0.1, "none", 2), (0.1, "heavy", 0)]
    assert all(c.epochs == 3 and c.base_width == 8 and c.study == "s" for c in configs)
    assert base.seed == 0 and base.study is None  # the base config is not changed


def test_configs_for_grid_refuse_empty_lists_and_bad_values():
    with pytest.raises(UNetLabError, match="at least one augmentation level"):
        configs_for_grid(RunConfig(), [0.5], [], [0])
    with pytest.raises(ConfigError, match="train_fraction"):
        configs_for_grid(RunConfig(), [0.9], ["none"], [0])


@pytest.mark.parametrize("text, seeds", [("0", [0]), ("0, 1,2", [0, 1, 2]), ("0-3", [0, 1, 2, 3]),
                                         ("2, 0-2", [2, 0, 1]), ("1;3", [1, 3])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1.5", "-1", "3-1"])
def test_parse_seeds_refuses_bad_text(text):
    with pytest.raises(UNetLabError, match="seed"):
        parse_seeds(text)


def test_validate_grid_reports_dataset_problems_before_queueing(tmp_path):
    with pytest.raises(UNetLabError, match="isbi2012 needs its folder"):
        validate_grid(StudyGrid(datasets=["isbi2012"]))
    with pytest.raises(UNetLabError, match="not in --datasets"):
        validate_grid(StudyGrid(datasets=["synthetic-nuclei"], roots={"isbi2012": str(tmp_path)}))
    with pytest.raises(UNetLabError, match="no such folder"):
        validate_grid(StudyGrid(datasets=["isbi2012"], roots={"isbi2012": str(tmp_path / "missing")}))
    with pytest.raises(UNetLabError, match="unknown dataset 'nuclei'"):
        validate_grid(StudyGrid(datasets=["nuclei"]))
    with pytest.raises(UNetLabError):  # the loader's own message about the empty folder
        validate_grid(StudyGrid(datasets=["isbi2012"], roots={"isbi2012": str(tmp_path)}))
    checked = validate_grid(StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.1, 0.8]))
    assert checked.roots == {}


def test_validate_grid_on_real_isbi_makes_roots_absolute(isbi2012_root):
    relative = os.path.relpath(isbi2012_root)
    checked = validate_grid(StudyGrid(datasets=["isbi2012"], roots={"isbi2012": relative}, fractions=[0.1]))
    assert checked.roots["isbi2012"] == str(Path(isbi2012_root).resolve())


@pytest.mark.parametrize("states, expected", [
    ([], ("queue", None)),
    ([RunState("a", "finished", True)], ("skip", "a")),
    ([RunState("a", "failed", False), RunState("b", "finished", True)], ("skip", "b")),
    ([RunState("a", "queued", False)], ("wait", "a")),
    ([RunState("a", "running", False)], ("wait", "a")),
    ([RunState("a", "evaluating", False)], ("wait", "a")),  # being evaluated
    ([RunState("a", "finished", False)], ("evaluate", "a")),  # trained with --no-evaluate
    ([RunState("a", "cancelled", False, 1.0), RunState("b", "failed", False, 2.0)], ("resume", "b")),
])
def test_skip_logic(states, expected):
    assert decide_action(states) == expected


def test_eta_is_mean_duration_times_what_is_left():
    assert estimate_eta([], 3, []) is None
    # mean 10 s; 2 waiting -> 20 s; running for 4 s -> 6 s more; running over the mean -> 0.
    assert estimate_eta([8.0, 12.0], 2, [4.0, 15.0]) == pytest.approx(26.0)
    assert estimate_eta([8.0, 12.0], 2, [4.0], parallel=2) == pytest.approx(13.0)


def test_seed_noise_note_uses_welch_t_test():
    from scipy.stats import ttest_ind

    far = within_seed_noise([0.90, 0.92, 0.94], [0.50, 0.52, 0.54])
    # Welch by hand: difference 0.4, standard error sqrt(2 * 0.0004 / 3), df 4 -> t = 24.49.
    t = 0.4 / np.sqrt(2 * 0.0004 / 3)
    assert t == pytest.approx(ttest_ind([0.90, 0.92, 0.94], [0.50, 0.52, 0.54]).statistic)
    assert far.within is False and far.p_value < 1e-4 and far.difference == pytest.approx(0.4)
    near = within_seed_noise([0.80, 0.90], [0.82, 0.86])
    assert near.within is True and near.p_value > 0.5
    assert within_seed_noise([0.8], [0.7, 0.71]).within is None
    assert within_seed_noise([0.5, 0.5], [0.5, 0.5]).within is True
    assert within_seed_noise([0.6, 0.6], [0.5, 0.5]).within is False


def test_grid_table_marks_best_cell_and_noise():
    metric = METRIC_NAMES["ap50"]
    rows = [("none", 0.1, 0.50), ("none", 0.1, 0.52), ("heavy", 0.1, 0.20), ("heavy", 0.1, 0.21),
            ("none", 0.5, 0.80), ("none", 0.5, 0.82), ("heavy", 0.5, 0.78), ("heavy", 0.5, 0.86)]
    table = pd.DataFrame([{"Dataset": "d", "Augmentation": a, "Train fraction": f, "Seed": i % 2, metric: v}
                          for i, (a, f, v) in enumerate(rows)])
    grid = grid_table(table, "d", metric)
    assert grid.best == ("heavy", 0.5) and grid.fractions == [0.1, 0.5] and grid.levels == ["none", "heavy"]
    assert grid.cells[("none", 0.5)].mean == pytest.approx(0.81)
    assert grid.verdicts[("none", 0.5)].within is True
    assert grid.verdicts[("heavy", 0.1)].within is False
    # Every cell has seeds 0 and 1: the verdicts are paired t-tests over them, not Welch's.
    from scipy.stats import ttest_ind, ttest_rel

    assert grid.tests[("heavy", 0.1)] == "paired t"
    assert grid.verdicts[("heavy", 0.1)].p_value == pytest.approx(ttest_rel([0.78, 0.86], [0.20, 0.21]).pvalue)
    header, text_rows, notes = grid_rows(grid)
    assert header == ["augmentation \\ train fraction", "10%", "50%"]
    assert text_rows[1][2] == "**0.8200 ± 0.0566 (n=2) best**"
    assert text_rows[0][2] == "0.8100 ± 0.0141 (n=2) ≈"
    assert text_rows[1][1] == "0.2050 ± 0.0071 (n=2)"
    assert "paired t-test" in notes[0] and "heavy 10% (paired t)" in notes[0]
    assert format_cell(CellStats((0.25,))) == "0.2500 (n=1)" and format_cell(None) == "no runs"
    # Cells that share fewer than two seeds fall back to Welch's t-test.
    unpaired = table.assign(Seed=[0, 1, 2, 3, 4, 5, 6, 7])
    grid = grid_table(unpaired, "d", metric)
    assert set(grid.tests.values()) == {"Welch"}
    assert grid.verdicts[("heavy", 0.1)].p_value == pytest.approx(
        ttest_ind([0.78, 0.86], [0.20, 0.21], equal_var=False).pvalue)


def test_level_comparisons_pair_runs_by_seed_with_bootstrap_and_holm():
    from scipy.stats import ttest_rel

    from core.stats import holm, paired_bootstrap
    from core.tables import comparisons_table, level_comparisons

    f1 = METRIC_NAMES["pixel_f1"]
    runs = {("none", 0): 0.80, ("none", 1): 0.82, ("none", 2): 0.78,
            ("heavy", 0): 0.75, ("heavy", 1): 0.80, ("heavy", 2): 0.70, ("light", 0): 0.81}
    table = pd.DataFrame([{"Run": f"{level}{seed}", "Dataset": "d", "Train fraction": 0.1, "Augmentation": level,
                           "Seed": seed, f1: value} for (level, seed), value in runs.items()])
    # Per-image scores: three validation images per seed (the same names for both levels of a seed).
    images = {("none", 0): [0.8, 0.7, 0.9], ("heavy", 0): [0.7, 0.7, 0.85], ("none", 1): [0.9, 0.8, 0.76],
              ("heavy", 1): [0.88, 0.75, 0.77], ("none", 2): [0.6, 0.9, 0.84], ("heavy", 2): [0.5, 0.8, 0.8],
              ("light", 0): [0.8, 0.7, 0.9]}
    summaries = {f"{level}{seed}": {"per_image": [{"name": f"s{seed}-{k}", "pixel_f1": v} for k, v in enumerate(vals)]}
                 for (level, seed), vals in images.items()}
    comparisons = level_comparisons(table, {"pixel_f1": f1}, summaries)
    assert [(c.level, c.seeds) for c in comparisons] == [("light", (0,)), ("heavy", (0, 1, 2))]
    light, heavy = comparisons
    assert light.paired.p_t is None and "no test possible" in light.sentence()  # one seed: no test
    heavy_values, none_values = [0.75, 0.80, 0.70], [0.80, 0.82, 0.78]
    assert heavy.paired.difference == pytest.approx(np.mean(np.subtract(heavy_values, none_values)))
    assert heavy.paired.p_t == pytest.approx(ttest_rel(heavy_values, none_values).pvalue)
    expected = paired_bootstrap([np.subtract(images[("heavy", s)], images[("none", s)]) for s in (0, 1, 2)])
    assert (heavy.interval.low, heavy.interval.high) == pytest.approx((expected.low, expected.high))
    assert heavy.n_images == 3
    assert heavy.p_holm == pytest.approx(holm([None, heavy.paired.p_t])[1])  # one tested comparison: unchanged
    sentence = heavy.sentence()
    assert sentence.startswith("pixel F1, d: heavy minus none at 10%: ")
    assert f"[{expected.low:.3f}, {expected.high:.3f}]" in sentence and "3 seeds x 3 images" in sentence
    assert "Holm" in sentence
    frame = comparisons_table(comparisons)
    assert list(frame["Comparison"]) == ["light − none", "heavy − none"]
    assert frame.loc[1, "p (paired t)"] == pytest.approx(heavy.paired.p_t)
    assert frame.loc[1, "Effect size d_z"] == pytest.approx(heavy.paired.d_z)
    # Without per-image scores the interval is the paired t one over seeds.
    bare = level_comparisons(table, {"pixel_f1": f1})[1]
    assert bare.interval is None and "(t 95%)" in bare.sentence()


def test_noise_note_names_the_single_seed_best_cell_not_the_others():
    metric = METRIC_NAMES["ap50"]
    rows = [("none", 0.1, 0.50), ("none", 0.1, 0.52), ("heavy", 0.1, 0.90)]
    table = pd.DataFrame([{"Dataset": "d", "Augmentation": a, "Train fraction": f, "Seed": i, metric: v}
                          for i, (a, f, v) in enumerate(rows)])
    notes = grid_rows(grid_table(table, "d", metric))[2]
    assert "the best cell has fewer than 2 seeds" in notes[0] and "none 10%" not in notes[0]


def test_paper_table1_holds_the_papers_figures():
    import csv

    expected = {"dsb2018": (0.47, 0.89, 100, 670), "isbi2012": (0.53, 0.93, 100, 30), "isbi2013": (0.42, 0.97, 20, 100),
                "ncmir": (0.23, 0.63, 200, 30), "epfl": (0.57, 0.95, 100, 165)}
    assert {name: (row["mAP"], row["F1"], row["epochs"], row["n_images"]) for name, row in PAPER_TABLE1.items()} \
        == expected
    source = PROJECT_ROOT.parent / "shared" / "paper" / "table1.csv"
    if source.is_file():  # the project's copy of the paper's table, where present
        for row in csv.DictReader(source.open()):
            ours = PAPER_TABLE1[row["dataset"]]
            assert (ours["name"], ours["mAP"], ours["F1"], ours["epochs"], ours["image_size"], ours["n_images"]) == (
                row["paper_name"], float(row["paper_map"]), float(row["paper_f1"]), int(row["paper_epochs"]),
                row["paper_image_size"], int(row["paper_n_images"]))


def test_table1_puts_the_papers_figures_beside_ours():
    f1 = METRIC_NAMES["pixel_f1"]
    pmap, dmap = f"{METRIC_NAMES['paper_map']} [components]", f"{METRIC_NAMES['dsb_map']} [components]"
    table = pd.DataFrame([{"Dataset": d, "Train fraction": 0.1, "Augmentation": "none", f1: 0.9, pmap: 0.3,
                           dmap: 0.2, "AP@0.5, TP/(TP+FP+FN) [components]": 0.4,
                           METRIC_NAMES["roc_auc"]: 0.95, METRIC_NAMES["average_precision"]: 0.9}
                          for d in ("isbi2012", "synthetic-nuclei")])
    header, rows, notes = table1(table, ["isbi2012", "synthetic-nuclei"], 0.1, "none", "components")
    assert header == ["metric", "isbi2012", "synthetic-nuclei"]
    assert rows[0][0].startswith("our setting")
    assert rows[1] == [f"mAP (ours): {pmap}", "0.3000 (n=1)", "0.3000 (n=1)"]
    assert rows[2] == ["mAP (the paper's Table 1, eq. (4)-(5))", "0.53", NOT_AVAILABLE]
    assert rows[3][1] == "0.9000 (n=1)" and rows[4] == ["F1 (the paper's Table 1)", "0.93", NOT_AVAILABLE]
    assert rows[-1][1] == "ISBI 2012: 100 epochs, 512x512, 30 images"
    assert "IoU >= r" in notes[0] and "F1 0.96 after training on 10% of the images" in notes[1]
    assert "isbi2012 F1 -0.030, mAP -0.230" in notes[2]


def test_table1_adds_membrane_f1_for_em_sets_only():
    f1, membrane = METRIC_NAMES["pixel_f1"], METRIC_NAMES["pixel_f1_negative"]
    pmap = f"{METRIC_NAMES['paper_map']} [components]"
    table = pd.DataFrame([{"Dataset": d, "Train fraction": 0.1, "Augmentation": "none", f1: 0.9, membrane: m, pmap: 0.3}
                          for d, m in [("isbi2012", 0.7), ("isbi2012", 0.8), ("dsb2018", 0.99)]])
    header, rows, notes = table1(table, ["isbi2012", "dsb2018"], 0.1, "none", "components")
    assert rows[-2] == [f"also ours, EM membrane sets: {membrane} (membrane F1)", "0.7500 ± 0.0707 (n=2)", "-"]
    assert any("membrane F1 row" in note and "isbi2012" in note for note in notes)
    assert is_membrane_dataset("isbi2013") and not is_membrane_dataset("epfl")
    assert not is_membrane_dataset("no-such-set")
    header, rows, notes = table1(table, ["dsb2018"], 0.1, "none", "components")
    assert not any("membrane" in row[0] for row in rows)
    # A run without the metric (still training, or evaluated before it existed) is not "no runs".
    unscored = pd.concat([table, pd.DataFrame([{"Dataset": "epfl", "Train fraction": 0.1, "Augmentation": "none"}])])
    header, rows, notes = table1(unscored, ["epfl", "isbi2013"], 0.1, "none", "components")
    assert rows[3][1:] == ["not evaluated", "no runs"]


def test_definitions_are_stored_and_grids_deduplicated(tmp_path):
    registry = Registry(tmp_path / "registry.sqlite")
    definition = StudyDefinition(name="s1")
    grid = StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.1], augmentations=["none"], command="first")
    assert definition.add_grid(grid)
    assert not definition.add_grid(StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.1],
                                             augmentations=["none"], command="again"))
    assert definition.add_grid(StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.1, 0.5], augmentations=["none"]))
    assert len(definition.configs()) == 2  # 0.1/none is in both grids, counted once
    path = save_study(definition, registry)
    assert path == tmp_path / "studies" / "s1.json" and [p.name for p in path.parent.iterdir()] == ["s1.json"]
    loaded = load_study("s1", registry)
    assert loaded.to_dict() == definition.to_dict()
    assert load_study("missing", registry) is None
    registry.create_run(RunConfig(study="from-app"))
    assert study_names(registry) == ["from-app", "s1"]
    path.write_text("{not json")
    with pytest.raises(UNetLabError, match="not a readable study definition"):
        load_study("s1", registry)


def test_plan_skips_waits_resumes_and_queues(tmp_path):
    registry = Registry(tmp_path / "registry.sqlite")
    definition = StudyDefinition("p", [StudyGrid(datasets=["synthetic-nuclei"], fractions=[0.1, 0.2, 0.5],
                                                 augmentations=["none", "heavy"])])
    configs = definition.configs()
    done = registry.create_run(configs[0], status="running")
    registry.set_status(done, "finished")
    registry.save_evaluation(done, "val", {"seconds": 1.0})
    waiting = registry.create_run(configs[1])
    killed = registry.create_run(configs[2], status="running")
    with registry._connect() as db:  # a process id that is surely gone: the run was killed
        db.execute("UPDATE runs SET pid=? WHERE id=?", (2 ** 22 + 12345, killed))
    other_settings = RunConfig.from_dict({**configs[3].to_dict(), "epochs": 99})
    registry.create_run(other_settings, status="queued")  # not this cell: different epochs
    plan = plan_study(definition, registry)
    assert [(item.action, item.run_id) for item in plan[:3]] == [("skip", done), ("wait", waiting), ("resume", killed)]
    assert [item.action for item in plan[3:]] == ["queue", "queue", "queue"]
    assert registry.get_run(killed).status == "failed"


# --------------------------------------------------------------------------------------
# Through the command line
# --------------------------------------------------------------------------------------


def study_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", "study", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def worker_pid(registry: Registry) -> int | None:
    try:
        return json.loads(registry.path.with_name("worker.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def is_our_worker(pid: int | None) -> bool:
    try:
        return process_alive(pid) and b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture
def registry():
    """The registry the subprocesses use (UNETLAB_CACHE is inherited); ends the worker afterwards."""
    registry = Registry()
    yield registry
    pid = worker_pid(registry)
    if is_our_worker(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + 20
        while is_our_worker(pid) and time.time() < deadline:
            time.sleep(0.2)


def test_study_runs_end_to_end_skips_finished_runs_and_reports(registry, tmp_path):
    grid = ["--datasets", "synthetic-nuclei", "--fractions", "0.2,0.5", "--augmentations", "none,heavy",
            "--seeds", "0", "--steps-per-epoch", "2", *TINY]
    result = study_cli("run", "--name", "tiny", *grid)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 runs: 4 queued" in result.stdout and "4 finished, 0 failed" in result.stdout
    runs = registry.list_runs(study="tiny")
    assert len(runs) == 4 and {run.status for run in runs} == {"finished"}
    assert all(registry.get_evaluation(run.id, "val") is not None for run in runs)

    # Again, with and without the grid: nothing new is created.
    for again in (grid, []):
        result = study_cli("run", "--name", "tiny", *again)
        assert result.returncode == 0, result.stderr
        assert "0 queued, 0 resumed" in result.stdout and "4 finished (skipped)" in result.stdout
    assert sorted(run.id for run in registry.list_runs(study="tiny")) == sorted(run.id for run in runs)

    # The tidy table: one row per run, exact metric names, the stored numbers.
    result = study_cli("table", "tiny", "--csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(io.StringIO(result.stdout))
    f1 = METRIC_NAMES["pixel_f1"]
    dsb = f"{METRIC_NAMES['dsb_map']} [components]"
    assert len(table) == 4 and {f1, dsb, METRIC_NAMES["roc_auc"], "Patch size"} <= set(table.columns)
    for run in runs:
        row = table[table["Run"] == run.id].iloc[0]
        stored = registry.get_evaluation(run.id, "val")
        assert row[f1] == pytest.approx(stored["pixel"]["f1"])
        assert row[dsb] == pytest.approx(stored["instances"]["components"]["dsb_map"])
        assert (row["Train fraction"], row["Augmentation"], row["Epochs"]) == (
            run.config.train_fraction, run.config.augmentation, 1)

    # The report.
    out = tmp_path / "report"
    result = study_cli("report", "tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    # 3 grid heatmaps, the metric-versus-fraction lines, ROC and PR: 6 figures; plotly.js once.
    assert page.count('class="plotly-graph-div"') == 6
    assert page.count("plotly.js v") >= 1 and page.count("<script type=\"text/javascript\">/**") <= 1
    assert "data:image/png;base64," in page and (out / "strip_synthetic-nuclei.png").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert NOT_AVAILABLE in summary and "python -m core study run --name tiny" in summary
    assert METRIC_NAMES["pixel_f1"] in summary and "**" in summary  # best cell marked
    methods = summary.split("## Post-processing methods side by side")[1].split("\n## ")[0]
    assert all(f"| {method} | {METRIC_NAMES['dsb_map']} |" in methods for method in ("components", "watershed",
                                                                                     "kmeans-watershed"))
    for run in runs:
        stored = registry.get_evaluation(run.id, "val")
        line = next(line for line in summary.splitlines() if line.startswith(f"| {run.id} |"))
        assert f"| {stored['pixel']['f1']:.4f} |" in line
        assert f"| {stored['curves']['roc_auc']:.4f} |" in line
        assert f"| {stored['instances']['components']['ap50']:.4f} |" in line
    # results.csv is the study table and opens on the Compare page without the registry.
    from core.tables import read_results_table

    saved = read_results_table((out / "results.csv").read_bytes(), "results.csv")
    assert sorted(saved["Run"]) == sorted(table["Run"])
    assert saved.set_index("Run")[f1].to_dict() == pytest.approx(table.set_index("Run")[f1].to_dict())

    result = study_cli("report", "tiny", "--out", str(out), "--level", "light")
    assert result.returncode == 2 and "--level light" in result.stderr


def test_killed_study_completes_when_run_again(registry):
    command = [sys.executable, "-m", "core", "study", "run", "--name", "killed", "--datasets", "synthetic-nuclei",
               "--fractions", "0.5", "--augmentations", "none,light", "--seeds", "0", "--steps-per-epoch", "20",
               *TINY]
    study = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim, deadline = None, time.time() + 120
    try:
        while victim is None and time.time() < deadline:  # the second run, while it runs
            runs = sorted(registry.list_runs(study="killed"), key=lambda run: run.created)
            if len(runs) == 2 and runs[1].status == "running" and runs[1].pid:
                victim = runs[1]
            time.sleep(0.2)
        assert victim is not None, "the second run never started"
    finally:
        study.kill()
        study.wait()
    worker = worker_pid(registry)
    if is_our_worker(worker):
        os.kill(worker, signal.SIGKILL)
    os.killpg(victim.pid, signal.SIGKILL)  # the training process runs in its own session
    while process_alive(victim.pid) or is_our_worker(worker):
        time.sleep(0.1)
    registry.reap_dead()
    assert registry.get_run(victim.id).status == "failed"

    result = study_cli("status", "killed")
    assert result.returncode == 0 and "1 failed" in result.stdout

    result = study_cli("run", "--name", "killed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 resumed" in result.stdout and "2 finished, 0 failed" in result.stdout
    runs = registry.list_runs(study="killed")
    assert len(runs) == 2 and victim.id in {run.id for run in runs}
    assert all(run.status == "finished" and registry.get_evaluation(run.id, "val") for run in runs)
    assert [epoch["epoch"] for epoch in registry.epochs(victim.id)] == [0, 1]


def test_cli_refuses_bad_grids_without_queueing(registry, tmp_path):
    result = study_cli("run", "--name", "bad", "--datasets", "synthetic-nuclei,isbi2012", "--no-wait")
    assert result.returncode == 2 and "isbi2012 needs its folder" in result.stderr
    result = study_cli("run", "--name", "bad", "--datasets", "isbi2012", "--roots", f"isbi2012={tmp_path}/nope")
    assert result.returncode == 2 and "no such folder" in result.stderr
    result = study_cli("run", "--name", "bad")
    assert result.returncode == 2 and "no stored study 'bad'" in result.stderr
    result = study_cli("run", "--name", "bad", "--seeds", "0,1")
    assert result.returncode == 2 and "--datasets" in result.stderr
    assert registry.list_runs() == [] and load_study("bad", registry) is None


def test_study_options_for_budgets_patience_and_a_csv_file(registry, tmp_path):
    import argparse

    from core.commands.study import grid_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["study", "run", "--name", "b", "--datasets", "synthetic-nuclei", "--budgets", "50,100",
                              "--patience", "3", "--steps-per-epoch", "25", "--fractions", "0.5"])
    grid = grid_from_args(args)
    assert grid.budgets == [50, 100] and grid.overrides["early_stopping_patience"] == 3
    configs = grid_configs(grid, "b")
    assert sorted({(c.epochs, c.early_stopping_patience) for c in configs}) == [(2, 3), (4, 3)]
    assert parser.parse_args(["study", "table", "x", "--csv"]).csv == "-"
    assert parser.parse_args(["study", "table", "x", "--csv", "out.csv"]).csv == "out.csv"
    assert parser.parse_args(["study", "table", "x"]).csv is None

    run_id = registry.create_run(RunConfig(study="t", epochs=1), status="running")
    registry.set_status(run_id, "finished")
    result = study_cli("table", "t", "--csv", str(tmp_path / "t.csv"))
    assert result.returncode == 0, result.stderr
    saved = pd.read_csv(tmp_path / "t.csv")
    assert list(saved["Run"]) == [run_id] and saved.loc[0, "Setting"] == "25 steps (1 epoch x 25)"
    result = study_cli("run", "--name", "b", "--datasets", "synthetic-nuclei", "--budgets", "40",
                       "--steps-per-epoch", "25", "--no-wait")
    assert result.returncode == 2 and "multiple of 25" in result.stderr
    assert registry.list_runs(study="b") == []
