"""The all-background baseline and the comparison tables, on a tiny case."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vessel_core.cases import Case
from vessel_core.compare import (
    TABLE_METRICS,
    AllBackground,
    notes_by_model,
    per_case_rows,
    summary_rows,
)
from vessel_core.metrics import evaluate


@pytest.fixture
def case():
    vessels = np.zeros((2, 5), bool)
    vessels[0, 0] = True  # 1 vessel pixel of 10
    return Case("c", np.zeros((2, 5, 3), np.uint8), np.ones((2, 5), bool), vessels)


def test_all_background_scores_high_accuracy_and_finds_nothing(case):
    prob = AllBackground().predict_proba(case)
    assert prob.shape == (2, 5) and prob.dtype == np.float32 and not prob.any()
    with pytest.warns(UserWarning):
        report = evaluate([case], [prob], threshold=0.5)
    row = summary_rows({"none": report}, "pooled")[0]
    assert row["accuracy"] == pytest.approx(0.9)  # 9 background pixels of 10
    assert row["sensitivity"] == 0.0
    assert row["specificity"] == 1.0
    assert math.isnan(row["precision"])  # nothing called vessel


def test_rows_hold_every_metric_and_the_seconds(case):
    perfect = case.vessel_mask.astype(np.float32)
    reports = {"perfect": evaluate([case], [perfect])}
    rows = summary_rows(reports, "mean", seconds={"perfect": 0.25})
    assert list(rows[0]) == ["model", "threshold", *TABLE_METRICS, "seconds_per_image"]
    assert rows[0]["f1"] == 1.0 and rows[0]["seconds_per_image"] == 0.25
    cases = per_case_rows(reports)
    assert [(r["model"], r["case"], r["f1"]) for r in cases] == [("perfect", "c", 1.0)]


def test_summary_rows_refuses_an_unknown_summary(case):
    with pytest.raises(ValueError, match="which must be 'mean' or 'pooled', got 'x'"):
        summary_rows({}, "x")


def test_notes_are_grouped_under_their_model(case):
    perfect = case.vessel_mask.astype(np.float32)
    with pytest.warns(UserWarning):
        background = evaluate([case], [np.zeros((2, 5), np.float32)])
    reports = {"perfect": evaluate([case], [perfect]), "nothing": background}
    notes = notes_by_model(reports)
    assert list(notes) == ["nothing"]  # a model without notes is left out
    assert notes["nothing"] == background.notes
    assert any(n.startswith("case c:") and "precision" in n for n in notes["nothing"])
