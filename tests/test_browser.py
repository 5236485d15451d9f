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
