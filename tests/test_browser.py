"""The main path in a real browser: Debian's chromium driven by Playwright.

Starts ``streamlit run app.py`` on a free local port, loads the built-in sample,
keeps the default undersampling, trains a quick KNN, scores it on Compare, opens
Results, and saves a screenshot of every page (the folder is printed).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

QUICK_KNN = {"k max": "5", "n folds": "3", "max train samples": "2000"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing (make browser installs it)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on 127.0.0.1:<free port>, models saved into a temporary folder."""
    port = free_port()
    models = tmp_path_factory.mktemp("models")
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    env = {**os.environ, "VESSEL_MODELS_DIR": str(models)}
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = ROOT / "runs" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(server)
        yield page
        browser.close()


def go_to(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.get_by_role("heading", name=title).first.wait_for()


def settle(page, quiet_ms: int = 800, timeout_ms: int = 240_000) -> None:
    """Wait until the app's script has stopped running and stays stopped."""
    idle = """() => document.querySelector('[data-testid="stApp"]')
                 ?.getAttribute('data-test-script-state') !== 'running'"""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        page.wait_for_timeout(300)
        page.wait_for_function(idle, timeout=timeout_ms)
        page.wait_for_timeout(quiet_ms)
        if page.evaluate(idle) or time.monotonic() > deadline:
            return


def shoot(page, shots: Path, name: str) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside its main area)."""
    height = page.evaluate(
        """() => Math.max(...[...document.querySelectorAll(
                 '[data-testid="stMain"], [data-testid="stMainBlockContainer"]')]
                 .map(e => e.scrollHeight))"""
    )
    page.set_viewport_size({"width": 1600, "height": min(max(height, 1000), 8000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / f"{name}.png"))
    page.set_viewport_size({"width": 1600, "height": 1000})


def images_shown(page) -> int:
    """How many images in the main area have loaded with a real size."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-testid="stMain"] img')]
                 .filter(i => i.complete && i.naturalWidth > 8).length"""
    )


def test_main_path_in_a_browser(page, shots):
    page.get_by_role("heading", name="Retinal vessel extraction").wait_for()
    settle(page)
    shoot(page, shots, "0_home")

    go_to(page, "1. Data")
    page.get_by_role("button", name="Load the built-in sample").click()
    page.get_by_text("Loaded 5 cases").wait_for()
    settle(page)
    assert page.get_by_text("3 train / 2 test").is_visible()
    shoot(page, shots, "1_data")

    go_to(page, "2. Undersampling")
    page.locator(".js-plotly-plot").first.wait_for()
    settle(page)
    assert images_shown(page) >= 1
    shoot(page, shots, "2_undersampling")

    go_to(page, "3. Train")
    settle(page)
    for label, value in QUICK_KNN.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Start training").click()
    try:  # a picture of the live view, if the fit lasts long enough to catch it
        page.get_by_text("Cross-validation score per k").first.wait_for(timeout=20_000)
        page.get_by_text("running").first.wait_for(timeout=1_000)
        shoot(page, shots, "3_train_running")
    except sync_api.TimeoutError:
        pass
    page.get_by_text(re.compile("Finished.*saved as")).wait_for(timeout=240_000)
    settle(page)
    assert page.locator(".js-plotly-plot").count() >= 1
    shoot(page, shots, "3_train")

    go_to(page, "4. Compare")
    page.get_by_role("button", name="Score the models").click()
    page.get_by_text("Accuracy alone misleads").wait_for(timeout=240_000)
    settle(page)
    table = page.locator('[data-testid="stTable"]').first
    numbers = re.findall(r"\b0\.\d{3}\b|\b1\.000\b", table.inner_text())
    assert len(numbers) >= 10, table.inner_text()
    shoot(page, shots, "4_compare")

    go_to(page, "5. Results")
    page.get_by_text("Downloads").wait_for(timeout=240_000)
    settle(page)
    assert images_shown(page) >= 4
    shoot(page, shots, "5_results")
