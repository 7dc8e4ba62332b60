"""Putting several models side by side: the all-background baseline and tables.

Scores come from `vessel_core.metrics.evaluate`; this module only arranges its
reports into rows for tables and charts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vessel_core.cases import Case
from vessel_core.metrics import Report

#: The figures shown for each model, in this order.
TABLE_METRICS = (
    "f1",
    "sensitivity",
    "specificity",
    "precision",
    "accuracy",
    "balanced_accuracy",
    "iou",
    "g_mean",
    "mcc",
    "auc_roc",
    "auc_pr",
)
ALL_BACKGROUND = "all background"


class AllBackground:
    """The predictor that calls every pixel background.

    It finds no vessel, yet its accuracy is the background's share of the FOV
    (about 0.87 on DRIVE): the reference that shows why accuracy alone misleads.
    """

    kind = "baseline"
    threshold = 0.5
    meta: dict[str, Any] = {}

    def predict_proba(self, case: Case) -> NDArray[np.float32]:
        """A probability map of zeros, the size of ``case``."""
        return np.zeros(case.shape, np.float32)


def summary_rows(
    reports: Mapping[str, Report],
    which: str = "mean",
    seconds: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per model: its name, threshold, `TABLE_METRICS` and seconds/image.

    Parameters
    ----------
    reports : mapping of model name to Report
    which : {"mean", "pooled"}
        Mean over cases, or figures of all FOV pixels pooled.
    seconds : mapping of model name to float, optional
        Seconds per image; left out of a row when missing.
    """
    if which not in ("mean", "pooled"):
        raise ValueError(f"which must be 'mean' or 'pooled', got {which!r}")
    rows = []
    for name, report in reports.items():
        figures = getattr(report, which)
        row: dict[str, Any] = {"model": name, "threshold": report.threshold}
        row.update({k: float(figures[k]) for k in TABLE_METRICS})
        if seconds is not None and name in seconds:
            row["seconds_per_image"] = float(seconds[name])
        rows.append(row)
    return rows


def per_case_rows(reports: Mapping[str, Report]) -> list[dict[str, Any]]:
    """One row per (model, case): ``model``, ``case`` and `TABLE_METRICS`."""
    return [
        {"model": name, "case": row["id"], **{k: row[k] for k in TABLE_METRICS}}
        for name, report in reports.items()
        for row in report.cases
    ]


def notes_by_model(reports: Mapping[str, Report]) -> dict[str, list[str]]:
    """Each model's notes on undefined figures, under its name; none: left out.

    The notes of a `Report` name the case but not the model (``"case 01:
    precision, mcc undefined (...)"``); side by side they must say whose they are.
    """
    return {name: list(r.notes) for name, r in reports.items() if r.notes}
