"""Starting and stopping the app for the real-browser tests and the benches.

`start_server` runs ``streamlit run app.py`` from the project folder, listening on
127.0.0.1 only (a free port unless one is given), with its own models folder
(``$VESSEL_MODELS_DIR``) and any further environment settings, and returns once
Streamlit's health check answers. tests/test_browser.py, bench/load_sessions.py
and bench/faults.py all start it this way, and drive Debian's chromium with
`CHROMIUM_ARGS` (`browser_page` opens one page in a browser of its own).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def browser_page(timeout_ms: int = 120_000, viewport: dict | None = None) -> Iterator:
    """A Playwright page in a chromium of its own, closed when the block ends."""
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=viewport)
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            yield page
        finally:
            browser.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    models_dir: str | Path,
    log_path: str | Path,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = 90.0,
) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on 127.0.0.1; ``(process, url)`` once healthy.

    Parameters
    ----------
    models_dir : str or Path
        Where the app lists and saves models (``$VESSEL_MODELS_DIR``).
    log_path : str or Path
        The server's stdout and stderr are appended here.
    env : mapping of str to str, optional
        More environment settings for the server, e.g. ``VESSEL_MAX_JOBS`` or
        ``STREAMLIT_SERVER_MAX_UPLOAD_SIZE``.
    port : int, optional
        The port; a free one by default.
    timeout : float, default=90.0
        Seconds to wait for the health check.

    Raises
    ------
    RuntimeError
        The server exited or was not healthy within ``timeout`` seconds; it is
        stopped, and the message ends with the last lines of its log.
    """
    port = port or free_port()
    log_path = Path(log_path)
    full_env = {**os.environ, "VESSEL_MODELS_DIR": str(models_dir), **(env or {})}
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
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"streamlit did not start:\n{tail}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate a server `start_server` started (kill it after 10 s)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
