"""Several users at once: N real browser sessions through the main path.

Starts ``streamlit run app.py`` on a free port with its own temporary models folder
(``$VESSEL_MODELS_DIR``) and ``VESSEL_MAX_JOBS=1``, then runs N sessions at the same
time (one thread, one chromium and one browser context each): load the built-in
sample, start a quick KNN under a name of its own (all sessions press *Start
training* together, so all but one wait in the jobs queue), wait until it is saved,
check the sidebar lists its own model as "this session" and no other session's
model that way, and open Results (images shown).

Prints the sessions that finished, every error seen (exception boxes, error boxes,
"Traceback" on a page, JavaScript errors, tracebacks in the server's log) and the
peak memory of the server (RSS of the streamlit process and its children, sampled
from /proc). Exit status 0 only when every session finished with no error.

Usage: ``.venv/bin/python bench/load_sessions.py [--sessions 5]``
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._server import (  # noqa: E402
    browser_page,
    start_server,
    stop_server,
)
from tests.test_browser import (  # noqa: E402  (the browser test's helpers)
    QUICK_KNN,
    go_to,
    images_shown,
    settle,
)

ERROR_SELECTORS = {
    "exception box": '[data-testid="stException"]',
    "error box": '[data-testid="stAlertContentError"]',
}


# ---------------------------------------------------------------------------------
# The server's memory and log


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class RssSampler(threading.Thread):
    """Samples `tree_rss` of one process every ``every`` seconds; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def log_tracebacks(log_path: Path) -> list[str]:
    """Each traceback in the server log, as its last 6 lines."""
    text = log_path.read_text(errors="replace")
    found = []
    for block in re.split(r"(?=Traceback \(most recent call last\))", text)[1:]:
        lines = block.splitlines()
        end = next(
            (i for i, line in enumerate(lines[1:], 1) if not line.startswith(" ")),
            len(lines) - 1,
        )
        found.append("\n".join(lines[max(0, end - 5) : end + 1]))
    return found


# ---------------------------------------------------------------------------------
# One browser session


def page_errors(page, where: str) -> list[str]:
    """Exception boxes, error boxes and "Traceback" text on the page now."""
    errors = []
    for what, selector in ERROR_SELECTORS.items():
        for box in page.locator(selector).all():
            text = " ".join(box.inner_text().split())[:300]
            errors.append(f"{where}: {what}: {text}")
    body = page.locator('[data-testid="stApp"]').inner_text()
    if "Traceback" in body:
        errors.append(f"{where}: 'Traceback' in the page text")
    return errors


def sidebar_models(page) -> dict[str, str]:
    """``{model name: origin}`` from the sidebar's Models list."""
    text = page.locator('[data-testid="stSidebar"]').inner_text()
    found = re.findall(r"^\s*(\S+) \(([a-z0-9]+), (this session|saved)\)", text, re.M)
    return {name: origin for name, _kind, origin in found}


@dataclass
class Session:
    """What one browser session did and saw."""

    index: int
    name: str
    steps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    saw_queue: str = ""
    finished: bool = False
    seconds: float = 0.0


def run_session(
    s: Session,
    url: str,
    start_together: threading.Barrier,
    all_trained: threading.Barrier,
    names: list[str],
) -> None:
    """One user's way through the app; fills ``s`` (never raises)."""
    t0 = time.monotonic()
    passed_start = trained = False
    try:
        with browser_page(viewport={"width": 1400, "height": 1000}) as page:
            page.on("pageerror", lambda e: s.errors.append(f"javascript: {e}"))
            page.goto(url)
            page.get_by_role("heading", name="Retinal vessel extraction").wait_for()
            settle(page)

            go_to(page, "1. Data")
            page.get_by_role("button", name="Load the built-in sample").click()
            page.get_by_text("Loaded 5 cases").wait_for()
            settle(page)
            s.errors += page_errors(page, "data")
            s.steps.append("loaded")

            go_to(page, "3. Train")
            settle(page)
            for label, value in QUICK_KNN.items():
                page.get_by_label(label, exact=True).fill(value)
            page.get_by_label("Save as", exact=True).fill(s.name)
            start_together.wait(timeout=300)
            passed_start = True
            page.get_by_role("button", name="Start training").click()
            s.saw_queue = _watch_queue(page)
            page.get_by_text(re.compile("Finished.*saved as")).wait_for(timeout=900_000)
            settle(page)
            s.errors += page_errors(page, "train")
            s.steps.append("trained")
            trained = True
            all_trained.wait(timeout=900)

            # all models saved: the sidebar calls only ours "this session"
            go_to(page, "5. Results")
            page.get_by_text("Downloads").wait_for(timeout=300_000)
            settle(page)
            models = sidebar_models(page)
            if models.get(s.name) != "this session":
                s.errors.append(
                    f"isolation: own model {s.name} listed as "
                    f"{models.get(s.name)!r}, expected 'this session'"
                )
            for other in names:
                if other != s.name and models.get(other) == "this session":
                    s.errors.append(
                        f"isolation: another session's model {other} is listed "
                        "as 'this session'"
                    )
                if other != s.name and other not in models:
                    s.errors.append(f"sidebar: saved model {other} is not listed")
            shown = images_shown(page)
            if shown < 4:
                s.errors.append(f"results: {shown} images shown, expected >= 4")
            s.errors += page_errors(page, "results")
            s.steps.append(f"results ({shown} images)")
            s.finished = True
    except Exception as exc:
        s.errors.append(f"step after {s.steps[-1:]}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        if not passed_start:
            start_together.abort()  # the others must not wait for us
        if not trained:
            all_trained.abort()
    finally:
        s.seconds = time.monotonic() - t0


def _watch_queue(page) -> str:
    """The queue text if it shows before the fit starts or ends, else ""."""
    queued = page.get_by_text(re.compile(r"Waiting: place \d+ in the queue"))
    running_or_done = page.get_by_text(re.compile(r"Finished.*saved as|: running, "))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if queued.count():
            return " ".join(queued.first.inner_text().split())
        if running_or_done.count():
            return ""
        page.wait_for_timeout(200)
    return ""


# ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    args = parser.parse_args(argv)
    n = args.sessions
    if n < 2:
        parser.error(f"--sessions must be >= 2 to test sharing, got {n}")

    tmp = Path(tempfile.mkdtemp(prefix="vessel-load-"))
    models, log = tmp / "models", tmp / "streamlit.log"
    models.mkdir()
    token = os.urandom(3).hex()
    names = [f"load-{token}-s{i}" for i in range(n)]
    sessions = [Session(i, names[i]) for i in range(n)]
    print(f"{n} sessions, models in {models}, server log {log}", flush=True)

    t0 = time.monotonic()
    proc, url = start_server(models, log, {"VESSEL_MAX_JOBS": "1"})
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        start_together = threading.Barrier(n)
        all_trained = threading.Barrier(n)
        threads = [
            threading.Thread(
                target=run_session,
                args=(s, url, start_together, all_trained, names),
                name=f"session-{s.index}",
            )
            for s in sessions
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        peak = sampler.stop()
        stop_server(proc)
    wall = time.monotonic() - t0

    errors = [f"session {s.index}: {e}" for s in sessions for e in s.errors]
    errors += [f"server log: {tb}" for tb in log_tracebacks(log)]
    queued = [s for s in sessions if s.saw_queue]
    if len(queued) < n - 1:
        errors.append(
            f"queue: {len(queued)} of {n} sessions saw the queue text, expected "
            f">= {n - 1} (one fit at a time)"
        )
    saved = sorted(p.name for p in models.iterdir() if not p.name.startswith("."))
    if saved != sorted(names):
        errors.append(f"models folder holds {saved}, expected {sorted(names)}")

    for s in sessions:
        print(
            f"session {s.index} ({s.name}): {'finished' if s.finished else 'FAILED'}"
            f" in {s.seconds:.0f} s; steps {', '.join(s.steps)}; queue text: "
            f"{s.saw_queue or '-'}"
        )
    done = sum(s.finished for s in sessions)
    print(f"finished: {done} of {n} sessions in {wall:.0f} s")
    print(f"queue text seen by {len(queued)} sessions")
    print(f"models saved: {len(saved)}")
    print(f"peak server RSS (streamlit + children): {peak / 2**20:.0f} MiB")
    print(f"errors: {len(errors)}")
    for e in errors:
        print(f"  - {e}")
    return 0 if done == n and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
