"""The code reads as STYLE.md asks: ruff's lint and format pass on the project;
and the app code keeps clear of what breaks across threads."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_check():
    result = _ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_app_code_never_swaps_the_process_wide_warning_state():
    # warnings.catch_warnings puts back what it found on leaving: two threads
    # (a fit, a page) leaving out of turn leave warnings off, or recorded into a
    # lost list, for the whole server. The package and pages warn with
    # vessel_core.progress.warn / kept_warnings / silence instead.
    import ast

    offenders = []
    for folder in ("vessel_core", "pages"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("catch_warnings", "simplefilter")
                ):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
