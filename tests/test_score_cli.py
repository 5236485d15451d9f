"""Tests of ``python -m core score``: the hand-checked acceptance case, folders, stacks and errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from core.cli import main
from core.metrics import METRIC_NAMES
from core.paths import PROJECT_ROOT


def acceptance_pair() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((100, 100), np.uint16)
    truth[10:30, 10:30] = 1
    truth[10:30, 50:70] = 2
    truth[60:80, 10:30] = 3
    prediction = np.zeros_like(truth)
    prediction[10:30, 10:30] = 7
    prediction[10:30, 54:74] = 9
    prediction[60:80, 60:80] = 4
    return truth, prediction


def run_json(capsys, *args) -> dict:
    assert main(["score", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def run_error(capsys, *args) -> str:
    assert main(["score", *map(str, args)]) == 2
    return capsys.readouterr().err


def test_acceptance_case_through_python_dash_m(tmp_path):
    truth, prediction = acceptance_pair()
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "pred.tif", prediction)
    completed = subprocess.run(
        [sys.executable, "-m", "core", "score", "--truth", str(tmp_path / "truth.tif"),
         "--prediction", str(tmp_path / "pred.tif"), "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    scores = json.loads(completed.stdout.strip().splitlines()[-1])
    dsb_keys = [key for key in scores if "dsb" in key.lower()]
    assert dsb_keys and all(abs(scores[key] - 0.32) < 1e-9 for key in dsb_keys)
    assert abs(scores["dsb_map"] - 0.32) < 1e-9
    assert scores[METRIC_NAMES["ap50"]] == pytest.approx(0.5)
    assert scores[METRIC_NAMES["precision50"]] == pytest.approx(2 / 3)
    assert scores[METRIC_NAMES["recall50"]] == pytest.approx(2 / 3)
    assert scores[METRIC_NAMES["f1_50"]] == pytest.approx(2 / 3)
    assert (scores[METRIC_NAMES["tp50"]], scores[METRIC_NAMES["fp50"]], scores[METRIC_NAMES["fn50"]]) == (2, 1, 1)
    assert scores["counts"] == {"tp": 2, "fp": 1, "fn": 1}
    # Paper mAP, IoU >= r over r = 0.50..1.00: 2/3 for r <= 0.65 (4 values), 1/3 for r = 0.70..1.00 (7 values;
    # object A is pixel-perfect, so it counts at r = 1.00): (4 * 2/3 + 7 * 1/3) / 11 = 5/11.
    assert scores[METRIC_NAMES["paper_map"]] == pytest.approx(5 / 11)
    assert scores[METRIC_NAMES["mean_matched_iou"]] == pytest.approx((1 + 16 / 24) / 2)
    # Pixels: truth > 0 vs prediction > 0 -> 720 shared pixels of 1200 each.
    assert scores[METRIC_NAMES["pixel_f1"]] == pytest.approx(0.6)
    assert 0 < scores[METRIC_NAMES["v_rand"]] < 1 and 0 < scores[METRIC_NAMES["v_info"]] < 1
    assert scores["n_images"] == 1 and len(scores["images"]) == 1


def test_human_readable_output_shows_the_display_names(tmp_path, capsys):
    truth, prediction = acceptance_pair()
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "pred.tif", prediction)
    assert main(["score", "--truth", str(tmp_path / "truth.tif"), "--prediction", str(tmp_path / "pred.tif")]) == 0
    output = capsys.readouterr().out
    assert re.search(re.escape(METRIC_NAMES["dsb_map"]) + r" +0\.3200\n", output)
    assert re.search(re.escape(METRIC_NAMES["fn50"]) + r" +1\n", output)
    assert METRIC_NAMES["v_rand"] in output


def test_folders_are_matched_by_stem_and_binary_masks_become_components(tmp_path, capsys):
    truth_dir, predicted_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir(), predicted_dir.mkdir()
    truth, prediction = acceptance_pair()
    # Image "a": 16-bit PNG labels against a TIFF prediction (the acceptance case).
    Image.fromarray(truth).save(truth_dir / "a.png")
    tifffile.imwrite(predicted_dir / "a.tif", prediction)
    # Image "b": a {0, 255} mask (two separate squares) scored against itself as labels.
    mask = np.zeros((100, 100), np.uint8)
    mask[5:15, 5:15] = mask[50:60, 50:60] = 255
    Image.fromarray(mask).save(truth_dir / "b.png")
    labels = (mask > 0).astype(np.uint16)
    labels[50:60, 50:60] = 40
    Image.fromarray(labels).save(predicted_dir / "b.png")
    (truth_dir / "notes.txt").write_text("not an image")
    scores = run_json(capsys, "--truth", truth_dir, "--prediction", predicted_dir)
    assert scores["n_images"] == 2
    assert [image["name"] for image in scores["images"]] == ["a", "b"]
    assert scores["images"][1][METRIC_NAMES["dsb_map"]] == 1.0
    assert scores["dsb_map"] == pytest.approx((0.32 + 1.0) / 2)
    assert scores["counts"] == {"tp": 4, "fp": 1, "fn": 1}


def test_tiff_stacks_are_scored_slice_by_slice(tmp_path, capsys):
    truth, prediction = acceptance_pair()
    tifffile.imwrite(tmp_path / "truth.tif", np.stack([truth, truth, truth]), photometric="minisblack")
    tifffile.imwrite(tmp_path / "pred.tif", np.stack([prediction, truth, np.zeros_like(truth)]), photometric="minisblack")
    scores = run_json(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "pred.tif")
    assert [image["name"] for image in scores["images"]] == ["truth[0]", "truth[1]", "truth[2]"]
    assert scores["dsb_map"] == pytest.approx((0.32 + 1.0 + 0.0) / 3)


def test_float_labels_with_whole_values_are_accepted_and_nan_becomes_null(tmp_path, capsys):
    truth, _ = acceptance_pair()
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros(truth.shape, np.float32))  # Fiji-style 32-bit labels
    scores = run_json(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "empty.tif")
    assert scores["dsb_map"] == 0.0
    assert scores[METRIC_NAMES["mean_matched_iou"]] is None  # no match: undefined, not 0


def test_grey_masks_saved_as_rgb_are_read_and_colour_images_refused(tmp_path, capsys):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = mask[20:30, 20:30] = 255
    Image.fromarray(mask).save(tmp_path / "truth.png")
    Image.fromarray(np.stack([mask, mask, mask, np.full_like(mask, 255)], axis=-1)).save(tmp_path / "rgba.png")
    assert run_json(capsys, "--truth", tmp_path / "truth.png", "--prediction", tmp_path / "rgba.png")["dsb_map"] == 1.0
    Image.fromarray(np.stack([mask, 0 * mask, mask], axis=-1)).save(tmp_path / "colour.png")
    message = run_error(capsys, "--truth", tmp_path / "truth.png", "--prediction", tmp_path / "colour.png")
    assert "colour.png" in message and "differing channels" in message


def test_real_isbi_labels_against_themselves_and_a_shifted_copy(isbi2012_root, tmp_path, capsys):
    labels = tifffile.imread(isbi2012_root / "train-labels.tif")[:2]  # 255 = cell interior, 0 = membrane
    tifffile.imwrite(tmp_path / "truth.tif", labels)
    tifffile.imwrite(tmp_path / "same.tif", labels)
    tifffile.imwrite(tmp_path / "shifted.tif", np.roll(labels, 3, axis=2))
    same = run_json(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "same.tif")
    assert same["dsb_map"] == 1.0 and same[METRIC_NAMES["v_rand"]] == 1.0 and same[METRIC_NAMES["v_info"]] == 1.0
    assert same[METRIC_NAMES["pixel_f1_all_positive"]] == pytest.approx(0.876, abs=0.03)
    shifted = run_json(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "shifted.tif")
    assert shifted["dsb_map"] < 1.0 and shifted[METRIC_NAMES["v_rand"]] < 1.0


def test_clear_errors(tmp_path, capsys):
    truth, prediction = acceptance_pair()
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    tifffile.imwrite(tmp_path / "small.tif", prediction[:50])
    tifffile.imwrite(tmp_path / "probabilities.tif", np.full(truth.shape, 0.73, np.float32))
    missing = run_error(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "nope.tif")
    assert "nope.tif" in missing and "no such file" in missing
    mismatch = run_error(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "small.tif")
    assert "size mismatch" in mismatch and "(100, 100)" in mismatch and "(50, 100)" in mismatch
    not_integer = run_error(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "probabilities.tif")
    assert "not integer" in not_integer and "0.73" in not_integer and "probabilities.tif" in not_integer
    file_and_folder = run_error(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path)
    assert "two files or two folders" in file_and_folder
    (tmp_path / "notes.txt").write_text("x")
    unsupported = run_error(capsys, "--truth", tmp_path / "truth.tif", "--prediction", tmp_path / "notes.txt")
    assert "unsupported file type" in unsupported
    for line in (missing, mismatch, not_integer, file_and_folder, unsupported):
        assert line.startswith("error: ") and "Traceback" not in line


def test_unmatched_stems_in_folder_mode(tmp_path, capsys):
    truth_dir, predicted_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir(), predicted_dir.mkdir()
    truth, prediction = acceptance_pair()
    for stem in ("a", "b"):
        tifffile.imwrite(truth_dir / f"{stem}.tif", truth)
    for stem in ("a", "c"):
        tifffile.imwrite(predicted_dir / f"{stem}.tif", prediction)
    message = run_error(capsys, "--truth", truth_dir, "--prediction", predicted_dir)
    assert "unmatched stems" in message and "only: b" in message and "only: c" in message
    tifffile.imwrite(predicted_dir / "a.tiff", prediction)
    assert "share the stem 'a'" in run_error(capsys, "--truth", truth_dir, "--prediction", predicted_dir)
