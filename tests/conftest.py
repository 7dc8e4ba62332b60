"""Shared fixtures: where DRIVE is, and tiny cases built in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def drive_dir() -> Path:
    """DRIVE's folder: $VESSEL_DRIVE_DIR, else ../shared/data/DRIVE."""
    env = os.environ.get("VESSEL_DRIVE_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "DRIVE"


@pytest.fixture(scope="session")
def drive_root() -> Path:
    root = drive_dir()
    if not (root / "training").is_dir() or not (root / "test").is_dir():
        pytest.skip(f"DRIVE not found at {root} (set VESSEL_DRIVE_DIR to its folder)")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
