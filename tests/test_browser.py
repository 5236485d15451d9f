"""The app in a real browser: headless Chromium driven by Playwright against `streamlit run app.py`.

Opens every page, launches a 1-epoch run from the Train page, reloads the page mid-run,
waits until the run is finished and evaluated, and segments an uploaded image.

Needs Debian's ``chromium`` package (``/usr/bin/chromium``; ``.ci/run`` installs it) and
skips with the reason otherwise. Set ``UNETLAB_SCREENSHOTS=/some/folder`` to keep a
screenshot of every page.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.paths import PROJECT_ROOT, cache_dir
from core.runs import Registry, process_alive

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PAGES = {"": "U-Net Lab", "train": "Train", "compare": "Compare", "curves": "Curves", "masks": "Masks",
         "segment": "Segment"}

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer on {url} within {timeout:.0f} s")


@pytest.fixture
def server(tmp_path):
    """``streamlit run app.py`` on a free localhost port, with this test's registry folders."""
    port = free_port()
    log = open(tmp_path / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.headless", "true", "--server.address", "localhost", "--browser.gatherUsageStats", "false"],
        cwd=PROJECT_ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://localhost:{port}"
    try:
        wait_for_server(url, process)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        stop_worker()


def stop_worker() -> None:
    """End the queue worker of this test's registry (its pid is in the lock file), if alive."""
    try:
        pid = json.loads((cache_dir() / "worker.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    if process_alive(pid):
        os.kill(pid, signal.SIGTERM)


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium package: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def wait_idle(page) -> None:
    """Wait until the script run has ended (Streamlit's "running" indicator is gone)."""
    page.wait_for_timeout(500)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="detached", timeout=120_000)


def download_by_clicking(page, button, attempts: int = 3):
    """The download a click on ``button`` starts, clicking again if none starts within 40 s.

    On a loaded CI machine a Streamlit rerun can replace the button just as it is clicked, and
    that click starts nothing (one CI run waited 120 s for it); the zip itself is ready before the
    button is drawn, so a fresh click downloads it at once.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(1, attempts + 1):
        try:
            with page.expect_download(timeout=40_000) as download:
                button.click()
            return download.value
        except PlaywrightTimeout:
            if attempt == attempts:
                raise
            wait_idle(page)


def open_page(page, url: str, name: str, title: str) -> None:
    page.goto(f"{url}/{name}")
    page.locator("h1").filter(has_text=title).first.wait_for(timeout=60_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0, f"an exception on page /{name}"


def screenshot(page, name: str) -> None:
    folder = os.environ.get("UNETLAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name or 'home'}.png"), full_page=True)


def fill_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    page.wait_for_timeout(300)


def test_browser_session(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.set_default_timeout(60_000)
    for name, title in PAGES.items():
        open_page(page, server, name, title)
        screenshot(page, f"empty-{name or 'home'}")

    # Launch a 1-epoch run from the Train page.
    open_page(page, server, "train", "Train")
    fill_number(page, "Epochs", 1)
    page.get_by_text("More settings").click()
    fill_number(page, "Steps per epoch", 2)
    fill_number(page, "Batch size", 2)
    fill_number(page, "Patch size (pixels)", 64)
    fill_number(page, "Depth (poolings)", 3)
    page.get_by_role("button", name="Launch 1 run(s)").click()
    page.get_by_text("Queued 1 run(s)").wait_for()
    (run,) = Registry().list_runs()
    assert run.config.epochs == 1 and run.config.steps_per_epoch == 2 and run.config.patch_size == 64

    # A reload loses nothing: the run is in the registry, and the page follows it to the end.
    page.reload()
    page.get_by_text(run.id).first.wait_for()
    page.get_by_text("Full evaluation: done").wait_for(timeout=240_000)
    assert Registry().get_run(run.id).status == "finished"
    screenshot(page, "train")

    for name in ("compare", "curves", "masks"):  # each shows the run in its run picker
        open_page(page, server, name, PAGES[name])
        page.get_by_text(run.config.label()).first.wait_for()
        screenshot(page, name)
    open_page(page, server, "", PAGES[""])
    page.get_by_text(re.compile(r"^1 run in the registry, 0 queued or running")).wait_for()
    screenshot(page, "home")

    # Segment an uploaded 16-bit image.
    image = (np.random.default_rng(0).random((150, 120)) * 4095).astype(np.uint16)
    upload = tmp_path / "cells.png"
    Image.fromarray(image).save(upload)
    open_page(page, server, "segment", "Segment")
    page.locator("input[type='file']").set_input_files(str(upload))
    page.get_by_text("Objects found").wait_for(timeout=120_000)
    wait_idle(page)
    page.get_by_text("cells.png: 120 x 150 pixels").wait_for()
    # The page's elements arrive in order; on a loaded machine the buttons can follow the caption.
    page.get_by_role("button", name="Download the mask (PNG, 0/255)").wait_for(state="visible")
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "segment")

    # A file that is not an image gets a message, not a traceback.
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.locator("input[type='file']").set_input_files(str(bad))
    page.get_by_text("is not supported").wait_for()
    assert page.locator("[data-testid='stException']").count() == 0


# ---- round two (#16) -----------------------------------------------------------------------------------

TINY_ARGS = ["--train-fraction", "0.5", "--augmentation", "none", "--steps-per-epoch", "2", "--batch-size", "2",
             "--patch-size", "64", "--depth", "3", "--width", "8", "--threads", "1", "--quiet"]


def train_tiny(epochs: int = 1) -> str:
    """Train a tiny run in this test's registry (the CLI, as a user would); its id."""
    before = {run.id for run in Registry().list_runs()}
    subprocess.run([sys.executable, "-m", "core", "train", "--dataset", "synthetic-nuclei", "--epochs", str(epochs),
                    *TINY_ARGS], cwd=PROJECT_ROOT, env=os.environ.copy(), check=True, capture_output=True)
    (run_id,) = {run.id for run in Registry().list_runs()} - before
    return run_id


@pytest.fixture
def tiny_run():
    """A finished, evaluated tiny run, trained before the server starts (list it before ``server``)."""
    return train_tiny()


def start_at(page, url: str, name: str, title: str) -> None:
    """Open the app at its home page, then at page ``name``: a fresh server asked for a page's URL
    first can answer "Page not found" before the navigation is registered."""
    open_page(page, url, "", PAGES[""])
    open_page(page, url, name, title)


def plotly_points(page, key: str) -> int:
    """Marker points in the plotly chart with this Streamlit key (read from the drawn figure)."""
    return page.evaluate("""(key) => {
        const chart = document.querySelector(`.st-key-${key} .js-plotly-plot`);
        if (!chart) { return -1; }
        // _fullData: the traces as drawn, their arrays decoded (plotly sends numbers as binary)
        return chart._fullData.filter((t) => t.mode === "markers").reduce((n, t) => n + (t._length || 0), 0);
    }""", key)


def test_segment_three_images_and_a_stack_then_download_one_zip(server, browser, tmp_path):
    import io
    import zipfile

    import pandas as pd
    import tifffile

    rng = np.random.default_rng(3)
    files = []
    for i in range(3):  # nuclei-like: bright discs on a dark background, for the shipped nuclei model
        image = np.zeros((96, 112), np.uint8)
        yy, xx = np.mgrid[:96, :112]
        for _ in range(6):
            cy, cx = rng.integers(12, 84), rng.integers(12, 100)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 200
        path = tmp_path / f"nuclei{i}.png"
        Image.fromarray(image).save(path)
        files.append(str(path))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, (rng.random((5, 64, 80)) * 255).astype(np.uint8))
    files.append(str(stack))

    page = browser.new_page(viewport={"width": 1400, "height": 2400}, accept_downloads=True)
    page.set_default_timeout(120_000)
    start_at(page, server, "segment", "Segment")
    page.locator("input[type='file']").set_input_files(files)
    page.get_by_text("Planes of the stack stack.tif (5 planes").wait_for()
    button = page.get_by_role("button", name=re.compile(r"Download all as one zip \(8 image"))
    button.wait_for(state="visible")
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    screenshot(page, "segment-batch")
    download = download_by_clicking(page, button)
    archive = zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes()))
    names = set(archive.namelist())
    stems = [f"nuclei{i}" for i in range(3)] + [f"stack_z{z:03d}" for z in range(5)]
    assert {f"masks/{stem}_mask.png" for stem in stems} <= names
    assert {f"labels/{stem}_labels.png" for stem in stems} <= names
    table = pd.read_csv(io.BytesIO(archive.read("objects.csv")))
    assert list(table["File"]) == [f"nuclei{i}.png" for i in range(3)] + ["stack.tif"] * 5
    assert (table["Objects"] >= 0).all() and "Median object area (pixels)" in table
    mask = np.asarray(Image.open(io.BytesIO(archive.read("masks/nuclei0_mask.png"))))
    assert mask.shape == (96, 112) and set(np.unique(mask)) <= {0, 255}


def test_correct_a_mask_save_it_and_fine_tune(tiny_run, server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 2600})
    page.set_default_timeout(120_000)
    start_at(page, server, "compare", "Compare")
    page.locator(".st-key-learning_curve .js-plotly-plot").wait_for()
    before = plotly_points(page, "learning_curve")
    assert before == 1

    open_page(page, server, "masks", "Masks")
    page.get_by_text("Correct the 'components' instances").click()
    canvas = page.locator("canvas.view")
    canvas.wait_for(state="visible")
    page.wait_for_timeout(500)  # the image and mask layers load
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=12)
    page.mouse.up()
    page.get_by_role("button", name="Use this mask").click()
    page.get_by_text("painted strokes applied").wait_for()
    wait_idle(page)
    screenshot(page, "masks-corrected")
    page.get_by_role("button", name="Save the corrected pair").click()
    page.get_by_text("registered as 'corrections: corrections-synthetic-nuclei'").wait_for()
    folder = cache_dir() / "corrections" / "corrections-synthetic-nuclei"
    (fix,) = list((folder / "masks").glob("fix-*.png"))
    saved = np.asarray(Image.open(fix)) > 0
    assert saved[saved.shape[0] // 2, saved.shape[1] // 4: 3 * saved.shape[1] // 4].all()  # the painted stroke
    page.get_by_role("button", name=re.compile(f"Fine-tune from {tiny_run}")).click()
    page.get_by_text(re.compile(r"Fine-tuning run \S+ \((queued|running|evaluating|finished)\)")).wait_for()
    (tuned,) = [run for run in Registry().list_runs() if run.config.dataset == "folder"]
    assert tuned.config.init_from == tiny_run
    deadline = time.time() + 300
    while Registry().get_run(tuned.id).status not in ("finished", "failed", "cancelled") or \
            Registry().get_evaluation(tuned.id) is None:
        assert time.time() < deadline and Registry().get_run(tuned.id).status not in ("failed", "cancelled"), \
            Registry().get_run(tuned.id).error
        time.sleep(1)

    open_page(page, server, "compare", "Compare")
    page.locator(".st-key-learning_curve .js-plotly-plot").wait_for()
    assert plotly_points(page, "learning_curve") == before + 1  # the curve gained the fine-tuned run's point
    screenshot(page, "compare-after-fine-tuning")


def test_cancel_and_resume_without_warnings(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.set_default_timeout(120_000)
    start_at(page, server, "train", "Train")
    fill_number(page, "Epochs", 200)
    page.get_by_text("More settings").click()
    fill_number(page, "Steps per epoch", 2)
    fill_number(page, "Batch size", 2)
    fill_number(page, "Patch size (pixels)", 64)
    fill_number(page, "Depth (poolings)", 3)
    page.get_by_text("Estimated time on this machine").or_(page.get_by_text("No time estimate yet")).first.wait_for()
    page.get_by_role("button", name="Launch 1 run(s)").click()
    page.get_by_text("Queued 1 run(s)").wait_for()
    # While the worker starts, no "no worker" warning: sample the page for 6 s.
    for _ in range(12):
        assert page.get_by_text("no worker serves").count() == 0
        page.wait_for_timeout(500)
    (run,) = Registry().list_runs()
    page.get_by_text(re.compile(r"running: epoch \d+/200")).first.wait_for(timeout=180_000)
    page.get_by_role("button", name="Cancel").first.click()
    page.get_by_text("status: **cancelled**").or_(page.get_by_text("status: cancelled")).first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Resume").first.click()
    page.get_by_text(re.compile(r"status: (queued|running)")).first.wait_for()
    page.wait_for_timeout(3000)
    queue_cancel = Registry().get_run(run.id)
    if queue_cancel.status in ("queued", "running"):
        from core import queue

        queue.cancel(run.id)
    log = (tmp_path / "streamlit.log").read_text()
    assert "A fragment rerun was triggered" not in log, log[-2000:]
    assert page.locator("[data-testid='stException']").count() == 0


def test_tables_fit_and_say_not_evaluated(tiny_run, server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.set_default_timeout(120_000)
    start_at(page, server, "curves", "Curves")
    table = page.locator("[data-testid='stDataFrame']").first
    table.wait_for()
    page.wait_for_timeout(1000)
    screenshot(page, "curves-table")
    widths = page.evaluate("""() => {
        const scroller = document.querySelector("[data-testid='stDataFrame'] .dvn-scroller");
        return scroller ? [scroller.scrollWidth, scroller.clientWidth] : null;
    }""")
    assert widths and widths[0] <= widths[1] + 2, f"the operating-point table is cut off on the right: {widths}"
    assert page.get_by_text("Infinity").count() == 0
