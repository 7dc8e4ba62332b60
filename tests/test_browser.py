"""The main path in a real browser: Debian's chromium driven by Playwright.

Starts ``streamlit run app.py`` on a free local port (`bench._server`), loads the
built-in sample, keeps the default undersampling, trains a quick KNN, scores it on
Compare, opens Results, and saves a screenshot of every page (the folder is
printed). A second server, started with a 1 MB upload limit, shows that a file
over the limit is refused in the uploader and costs nothing already loaded.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench._server import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent

QUICK_KNN = {"k max": "5", "n folds": "3", "max train samples": "2000"}

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing (make browser installs it)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing")


@contextlib.contextmanager
def app_server(
    models: Path, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """The app's URL while the block runs; the test fails if it does not start."""
    models.mkdir(parents=True, exist_ok=True)
    try:
        proc, url = start_server(models, log, env)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on 127.0.0.1:<free port>, models saved into a temporary folder."""
    tmp = tmp_path_factory.mktemp("server")
    with app_server(tmp / "models", tmp / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = ROOT / "runs" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module (Playwright's sync API runs once per thread)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser, url: str):
    """A page of its own (a fresh browser context: a new session) at ``url``."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def page(server, browser):
    page = new_page(browser, server)
    yield page
    page.context.close()


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


def pick_another_image(page) -> str:
    """On Undersampling, choose an image other than the one shown; its id."""
    shown = page.get_by_text(re.compile(r"^Case \S+: the pixels")).inner_text()
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Image").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    other = next(t for t in options.all_inner_texts() if f"Case {t}:" not in shown)
    page.get_by_role("option", name=other).click()
    page.get_by_text(f"Case {other}:").wait_for()
    settle(page)
    return other


def test_a_reload_keeps_the_session(server, browser, shots):
    """A reload (or a page switch, then a reload) keeps what the session loaded."""
    page = new_page(browser, server)
    try:
        go_to(page, "1. Data")
        page.get_by_role("button", name="Load the built-in sample").click()
        page.get_by_text("Loaded 5 cases").wait_for()
        settle(page)
        sid = re.search(r"[?&]session=([0-9a-f]{32})", page.url)
        assert sid, page.url

        go_to(page, "2. Undersampling")  # a page switch clears the address's query
        settle(page)
        assert f"session={sid.group(1)}" in page.url  # ... and the app puts it back
        other = pick_another_image(page)
        page.reload()
        page.get_by_text("Welcome back").wait_for()
        settle(page)
        sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "built-in sample: 5 cases" in sidebar, sidebar
        assert page.locator(".js-plotly-plot").count() >= 1  # not "load data first"
        assert f"session={sid.group(1)}" in page.url
        page.get_by_text(f"Case {other}:").wait_for()  # the widgets' values too
        shoot(page, shots, "2_undersampling_after_reload")

        # an address with a session this server never gave out starts afresh
        page.goto(re.sub(r"session=[0-9a-f]{32}", "session=" + "0" * 32, page.url))
        page.get_by_text("Nothing yet.").wait_for()  # the sidebar, on a stopped page
        page.get_by_text("No data loaded yet").wait_for()
        assert "session=" + "0" * 32 not in page.url
    finally:
        page.context.close()


def test_two_tabs_on_one_session_each_keep_their_own_changes_and_see_the_others(
    server, browser
):
    tab_a = new_page(browser, server)
    try:
        go_to(tab_a, "1. Data")
        tab_a.get_by_role("button", name="Load the built-in sample").click()
        tab_a.get_by_text("Loaded 5 cases").wait_for()
        go_to(tab_a, "2. Undersampling")
        settle(tab_a)
        tab_b = tab_a.context.new_page()  # the same address in a second tab
        tab_b.set_default_timeout(60_000)
        tab_b.goto(tab_a.url)
        tab_b.get_by_text("Welcome back").wait_for()
        settle(tab_b)

        other = pick_another_image(tab_a)
        tab_b.get_by_label("Random seed").fill("7")
        tab_b.get_by_label("Random seed").press("Enter")
        settle(tab_b)  # tab B ran last, but changed only the seed
        # and it took in tab A's image on that run, without a reload
        tab_b.get_by_text(f"Case {other}:").wait_for()

        tab_a.reload()
        tab_a.get_by_text("Welcome back").wait_for()
        settle(tab_a)
        tab_a.get_by_text(f"Case {other}:").wait_for()
        assert tab_a.get_by_label("Random seed").input_value() == "7"
    finally:
        tab_a.context.close()


def test_a_first_visit_to_a_page_address_after_a_start_runs_the_whole_app(
    tmp_path, browser
):
    """A bookmark or reload of /train right after the server starts (stale session)."""
    with app_server(tmp_path / "models", tmp_path / "streamlit.log") as url:
        page = new_page(browser, f"{url.rstrip('/')}/train?session={'a' * 32}")
        try:
            page.get_by_role("heading", name="3. Train").first.wait_for()
            page.get_by_text("Nothing yet.").wait_for()  # the app's own sidebar
            settle(page)
            sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
            assert "1. Data" in sidebar and "ui" not in sidebar.split(), sidebar
            assert re.search(r"session=[0-9a-f]{32}", page.url), page.url
            assert "session=" + "a" * 32 not in page.url
        finally:
            page.context.close()


# ---------------------------------------------------------------------------------
# An upload over the server's size limit

UPLOAD_LIMIT_MB = 1


@pytest.fixture
def small_upload_server(tmp_path):
    """The app with ``server.maxUploadSize`` lowered to 1 MB through its variable."""
    env = {"STREAMLIT_SERVER_MAX_UPLOAD_SIZE": str(UPLOAD_LIMIT_MB)}
    with app_server(tmp_path / "models", tmp_path / "streamlit.log", env) as url:
        yield url


def test_an_upload_over_the_size_limit_is_refused_and_keeps_the_data(
    small_upload_server, browser, shots, tmp_path
):
    big = tmp_path / "big_fundus.png"
    noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big)  # noise does not compress: about 2.4 MB
    assert big.stat().st_size > 2 * UPLOAD_LIMIT_MB * 2**20

    page = new_page(browser, small_upload_server)
    uploads = []  # what the page sends to Streamlit's upload endpoint
    page.on("request", lambda r: "upload_file" in r.url and uploads.append(r.url))
    try:
        go_to(page, "1. Data")
        page.get_by_role("button", name="Load the built-in sample").click()
        page.get_by_text("Loaded 5 cases").wait_for()
        settle(page)
        page.get_by_text("Upload files", exact=True).click()
        settle(page)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
            str(big)
        )

        # the uploader marks the named file refused; pointing at it shows the limit
        said = f"File must be {UPLOAD_LIMIT_MB:.1f}MB or smaller."
        chip = page.locator('[data-testid="stFileChip"]', has_text="big_fundus.png")
        chip.get_by_text(said).wait_for(state="attached")
        settle(page)
        assert chip.get_attribute("aria-invalid") == "true"
        chip.hover()
        tooltip = page.locator('[data-testid="stTooltipErrorContent"]')
        tooltip.wait_for()
        assert tooltip.inner_text() == said
        shoot(page, shots, "1_data_upload_over_limit")

        # nothing was sent or loaded; the sample loaded before is still there
        assert uploads == []
        assert page.get_by_role("button", name="Pair and load").is_disabled()
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0
        heading = page.get_by_role("heading", name="5 cases (built-in sample)")
        assert heading.is_visible()
        assert page.locator('[data-testid="stAlertContentSuccess"]').count() == 0
        sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "built-in sample: 5 cases" in sidebar and "3 train / 2 test" in sidebar
    finally:
        page.context.close()
