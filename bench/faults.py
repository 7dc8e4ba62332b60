"""Faults: the server killed mid-training, a save killed mid-write, then a restart.

1. *Server killed while training.* A models folder is seeded with whole models (a
   quick KNN and the classic filters, fitted here on the built-in sample). The app
   is started on it; a real browser loads the sample and starts a quick KNN; once
   the Train page shows the job running, the server gets SIGKILL.
2. *Save killed while writing.* Child processes call
   ``vessel_core.store.save_model`` on the real KNN wrapped in `SlowSave`, whose
   ``save_files`` writes the KNN's own files and then a large padding file in
   chunks. Each child is SIGKILLed at a different point: early in the padding,
   late in it, once ``model.json`` is written (fsync and rename), and while
   replacing an existing model (``overwrite=True``). One child is left to finish.
3. *Restart.* `store.list_models` must list exactly the whole models (the seeded
   ones, the finished child's, and any killed save that had already renamed its
   folder into place); each listed one must load with `store.load_model` and
   predict a probability map of the right shape in [0, 1] on a sample case.
   Leftovers are removed by ``clean_stale(max_age=0)`` without changing the list.
   The app is started again on the folder; its sidebar must list the same models
   with no error box.

Prints each check; exit status 1 on any failure. ``--quick`` uses fewer and
smaller save kills (for tests/test_faults.py).

Usage: ``.venv/bin/python bench/faults.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench._server import browser_page, start_server, stop_server  # noqa: E402
from vessel_core import samples, store  # noqa: E402
from vessel_core.cases import split_cases  # noqa: E402

PADDING_FILE = "padding.bin"
CHUNK = 1 << 20  # bytes per write of the padding
#: The server's settings besides its models folder: one fit at a time.
SERVER_ENV = {"VESSEL_MAX_JOBS": "1"}


class SlowSave:
    """A model whose save is slow: the inner model's files, then a padding file.

    Looks like the inner model to `store.save_model` (same ``kind``, ``meta`` and
    ``threshold``), so a folder it completes loads as the inner kind; the padding
    file is ignored by the loader.
    """

    def __init__(self, inner, padding_mb: int, pause: float) -> None:
        self.inner = inner
        self.kind, self.meta, self.threshold = inner.kind, inner.meta, inner.threshold
        self.padding_mb, self.pause = padding_mb, pause

    def save_files(self, folder: Path) -> None:
        self.inner.save_files(folder)
        chunk = np.random.default_rng(0).bytes(CHUNK)
        with open(Path(folder) / PADDING_FILE, "wb") as f:
            for _ in range(self.padding_mb):
                f.write(chunk)
                f.flush()
                time.sleep(self.pause)


def child_save(source: str, target: str, overwrite: bool, mb: int, pause: float):
    """In a child process: load ``source`` and save it slowly to ``target``."""
    model = store.load_model(source)
    print("saving", flush=True)
    store.save_model(SlowSave(model, mb, pause), target, overwrite=overwrite)
    print("saved", flush=True)


# ---------------------------------------------------------------------------------


class Checks:
    """Prints each check as it is made and counts the failures."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {what}" + (f": {detail}" if detail else ""), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(f"{what}: {detail}")
        return ok


def seed_models(root: Path) -> dict[str, Path]:
    """Fit a quick KNN and the classic filters on the sample; save them whole."""
    from vessel_core.classic import ClassicFilters
    from vessel_core.knn import KNNModel

    train = split_cases(samples.builtin_sample(), "train")
    knn = KNNModel(k_max=5, n_folds=3, max_train_samples=2000)
    knn.fit(train)
    classic = ClassicFilters()
    classic.fit(train)
    return {
        "seed-knn": store.save_model(knn, root / "seed-knn"),
        "seed-classic": store.save_model(classic, root / "seed-classic"),
    }


def check_listed(c: Checks, root: Path, expected: set[str], maybe: set[str]) -> set:
    """list_models lists ``expected`` (plus any of ``maybe``); each loads, predicts."""
    case = split_cases(samples.builtin_sample(), "test")[0]
    listed = {e.name for e in store.list_models(root)}
    c.check(
        expected <= listed <= expected | maybe,
        "list_models lists only whole models",
        f"listed {sorted(listed)}; expected {sorted(expected)}"
        + (f" plus maybe {sorted(maybe)}" if maybe else ""),
    )
    for name in sorted(listed):
        try:
            model = store.load_model(root / name)
            prob = np.asarray(model.predict_proba(case))
        except Exception as exc:
            c.check(False, f"{name} loads and predicts", f"{type(exc).__name__}: {exc}")
            continue
        good = (
            prob.shape == case.fov_mask.shape
            and bool(np.isfinite(prob).all())
            and 0.0 <= float(prob.min()) <= float(prob.max()) <= 1.0
        )
        c.check(
            good,
            f"{name} ({model.kind}) loads and predicts case {case.id}",
            f"map {prob.shape}, range [{prob.min():.3f}, {prob.max():.3f}]",
        )
    return listed


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------
# Step 1: the server killed while training


def kill_server_mid_fit(c: Checks, root: Path, log: Path) -> None:
    from load_sessions import go_to, settle
    from playwright import sync_api

    proc, url = start_server(root, log, SERVER_ENV)
    killed_at = ""
    try:
        with browser_page() as page:
            page.goto(url)
            go_to(page, "1. Data")
            page.get_by_role("button", name="Load the built-in sample").click()
            page.get_by_text("Loaded 5 cases").wait_for()
            settle(page)
            go_to(page, "3. Train")
            settle(page)
            # the default settings, not the quick ones: a longer fit to kill
            page.get_by_label("Save as", exact=True).fill("killed-mid-fit")
            page.get_by_role("button", name="Start training").click()
            running = page.get_by_text(re.compile(r"killed-mid-fit.*: running, "))
            running.first.wait_for(timeout=60_000)
            killed_at = " ".join(running.first.inner_text().split())
            # once a cross-validation fold has been scored the fit is busy; on
            # a fast machine the chart may come late, so do not wait forever
            try:
                page.get_by_text("Cross-validation score per k").first.wait_for(
                    timeout=20_000
                )
            except sync_api.TimeoutError:
                pass
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    c.check(
        proc.returncode == -signal.SIGKILL,
        "server SIGKILLed while the job showed running",
        f"page said {killed_at!r}, exit status {proc.returncode}",
    )


# ---------------------------------------------------------------------------------
# Step 2: saves killed while writing


def kill_saves(c: Checks, root: Path, quick: bool) -> tuple[set[str], set[str]]:
    """Run the killed saves; return (names that must be listed, names that may)."""
    mb, pause = (24, 0.02) if quick else (96, 0.02)
    # (name, kill when, overwrite): kill when the padding reaches a fraction, or
    # when model.json has appeared in the temporary folder ("json")
    trials = [
        ("killed-early", 0.1, False),
        ("killed-late", 0.9, False),
        ("killed-json", "json", False),
        ("seed-knn", 0.5, True),
        ("finished-save", None, False),
    ]
    if quick:
        trials = [trials[0], trials[2], trials[3], trials[4]]

    must, may = {"finished-save"}, set()
    for name, when, overwrite in trials:
        target = root / name
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-save",
            json.dumps([str(root / "seed-knn"), str(target), overwrite, mb, pause]),
        ]
        child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        seen = _kill_when(child, root, name, when, mb)
        child.wait(60)
        if when is None:
            c.check(
                child.returncode == 0,
                f"save {name} left alone finishes",
                f"exit status {child.returncode}",
            )
            continue
        if name == "killed-json":
            may.add(name)  # the rename may have happened before the kill
        c.check(
            child.returncode == -signal.SIGKILL,
            f"save {name} (overwrite={overwrite}) SIGKILLed {seen}",
            f"exit status {child.returncode}",
        )
    return must, may


def _kill_when(child, root: Path, name: str, when, mb: int) -> str:
    """Poll the child's temporary folder; SIGKILL it at ``when``; say when it was."""
    if when is None:
        return "not killed"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        for tmp in root.glob(f".tmp-{name}-*"):
            try:
                if when == "json" and (tmp / store.META_FILE).exists():
                    os.kill(child.pid, signal.SIGKILL)
                    return "once model.json was written"
                size = (tmp / PADDING_FILE).stat().st_size
            except FileNotFoundError:
                continue
            if when != "json" and size >= when * mb * CHUNK:
                os.kill(child.pid, signal.SIGKILL)
                return f"at {size / 2**20:.0f} of {mb} MiB padding"
        time.sleep(0.002)
    child.kill()
    return "only at the deadline (the save never reached the kill point)"


# ---------------------------------------------------------------------------------
# Step 3: restart


def restart_and_look(c: Checks, root: Path, log: Path, listed: set[str]) -> None:
    from load_sessions import page_errors, settle, sidebar_models

    proc, url = start_server(root, log, SERVER_ENV)
    try:
        with browser_page() as page:
            page.goto(url)
            page.get_by_role("heading", name="Retinal vessel extraction").wait_for()
            settle(page)
            shown = sidebar_models(page)
            errors = page_errors(page, "home")
    finally:
        stop_server(proc)
    c.check(True, "server restarted on the same models folder", url)
    c.check(
        set(shown) == listed and set(shown.values()) <= {"saved"},
        "restarted app's sidebar lists the same models",
        f"{shown}",
    )
    c.check(not errors, "no error box after the restart", "; ".join(errors))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller kills")
    parser.add_argument("--child-save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_save:
        child_save(*json.loads(args.child_save))
        return 0

    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="vessel-faults-"))
    root, log = tmp / "models", tmp / "streamlit.log"
    root.mkdir()
    print(f"models folder {root}, server log {log}", flush=True)
    c = Checks()

    print("seeding whole models", flush=True)
    seed = set(seed_models(root))
    c.check(True, "seeded", ", ".join(sorted(seed)))

    print("1. server killed while training", flush=True)
    kill_server_mid_fit(c, root, log)
    # a fit that ended and saved just before the kill would be listed (and whole)
    listed = check_listed(c, root, seed, {"killed-mid-fit"})
    c.check(
        "killed-mid-fit" in listed or not (root / "killed-mid-fit").exists(),
        "the killed fit left no half model folder",
        f"hidden leftovers: {hidden(root) or 'none'}",
    )

    print("2. saves killed while writing", flush=True)
    must, may = kill_saves(c, root, args.quick)
    print(f"  hidden leftovers: {hidden(root) or 'none'}", flush=True)

    print("3. after the kills", flush=True)
    listed = check_listed(c, root, seed | must, may | (listed - seed))
    removed = store.clean_stale(root, max_age=0)
    c.check(
        not [h for h in hidden(root) if h.startswith((".tmp-", ".trash-"))],
        "clean_stale(max_age=0) removes every leftover",
        f"removed {len(removed)}, left {hidden(root) or 'none'}",
    )
    after = {e.name for e in store.list_models(root)}
    c.check(
        after == listed, "the list is unchanged by the clean-up", str(sorted(after))
    )
    restart_and_look(c, root, log, after)

    print(
        f"{c.passed} checks passed, {len(c.failed)} failed, "
        f"{time.monotonic() - t0:.0f} s"
    )
    for f in c.failed:
        print(f"  - {f}")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
