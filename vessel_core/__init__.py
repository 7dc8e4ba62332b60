"""Retinal vessel extraction: loading, sampling, models and FOV-restricted scoring."""

from __future__ import annotations

__version__ = "0.1.0"
