"""bench/faults.py --quick: a killed server and killed saves leave only whole models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path("/usr/bin/chromium").exists():
    pytest.skip("/usr/bin/chromium is missing (make browser)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is missing")


def test_faults_quick_leave_only_whole_models():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faults.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "[FAIL]" not in run.stdout
    assert ", 0 failed" in run.stdout
    # every kind of kill was made and seen
    for what in ("server SIGKILLed", "killed-early", "killed-json", "overwrite=True"):
        assert what in run.stdout, what
