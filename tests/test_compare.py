"""The all-background baseline, scoring several models and the comparison tables."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from vessel_core.cases import Case
from vessel_core.compare import (
    ALL_BACKGROUND,
    TABLE_METRICS,
    AllBackground,
    MapCache,
    Scoring,
    SharedCache,
    notes_by_model,
    per_case_rows,
    score_models,
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


# -- scoring several models -------------------------------------------------------


class Truth:
    """A model that predicts the manual mask (optionally slowly, or not at all)."""

    threshold = 0.5

    def __init__(self, gate=None, broken=False):
        self.gate, self.broken, self.calls = gate, broken, 0

    def predict_proba(self, case):
        self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.broken:
            raise RuntimeError("weights missing")
        return case.vessel_mask.astype(np.float32)


def test_score_models_leaves_a_broken_model_out_and_adds_the_baseline(case):
    events = []

    def unreadable():
        raise ValueError("model.json: not JSON")

    scored = score_models(
        {"truth": Truth(), "broken": Truth(broken=True), "unreadable": unreadable},
        [case, case],
        on_progress=events.append,
    )
    assert list(scored.reports) == ["truth", ALL_BACKGROUND]
    assert scored.reports["truth"].mean["f1"] == 1.0
    assert scored.errors == {
        "broken": "RuntimeError: weights missing",
        "unreadable": "model.json: not JSON",  # loaded here, in the scoring
    }
    assert [e.message for e in events if e.step == "load"] == ["loading unreadable"]
    assert set(scored.seconds) == {"truth"} and not scored.stopped
    assert [e.done for e in events if e.step == "predict"] == [0, 1, 2]
    assert events[-1].step == "done" and events[-1].done == 6


def test_score_models_stops_before_the_next_map(case):
    stop = threading.Event()
    truth = Truth()

    def predict(name, model, c):
        stop.set()  # asked during the first map
        return model.predict_proba(c), 0.0

    scored = score_models({"truth": truth}, [case, case], predict, stop=stop)
    assert scored.stopped and scored.reports == {} and truth.calls == 1


def test_a_scoring_runs_in_its_own_thread_and_can_be_stopped(case):
    gate = threading.Event()
    task = Scoring({"truth": Truth(gate)}, [case, case], label={"who": "me"})
    assert not task.finished and task.total == 2 and task.label == {"who": "me"}
    assert not task.wait(0.05)
    assert task.progress.message == "truth on case c"
    gate.set()
    assert task.wait(10)
    assert list(task.result.reports) == ["truth", ALL_BACKGROUND]

    stopped = threading.Event()
    task = Scoring({"truth": Truth(stopped)}, [case, case])
    task.stop()
    stopped.set()
    assert task.wait(10) and task.result.stopped


def test_a_shared_cache_keeps_its_newest_values_within_their_cost():
    cache = SharedCache(2)
    assert cache.get("a", lambda: "A") == "A"
    assert cache.get("a", lambda: "other") == "A" and "a" in cache
    cache.get("b", lambda: "B")
    cache.get("c", lambda: "C")  # past 2: a, the least recently used, goes
    assert "a" not in cache and len(cache) == 2


def test_map_cache_computes_once_and_drops_the_oldest_past_its_bytes():
    cache = MapCache(max_bytes=2 * 400)  # two 10x10 float32 maps
    calls = []

    def compute(value):
        def make():
            calls.append(value)
            return np.full((10, 10), value, np.float32)

        return make

    first, seconds = cache.get("a", compute(1))
    again, same_seconds = cache.get("a", compute(9))
    assert again is first and same_seconds == seconds and calls == [1]
    assert not first.flags.writeable  # shared between threads and pages
    cache.get("b", compute(2))
    cache.get("a", compute(9))  # a is now the most recent
    cache.get("c", compute(3))  # past the bound: b, the oldest, goes
    assert len(cache) == 2 and calls == [1, 2, 3]
    assert cache.get("a", compute(9))[0][0, 0] == 1
    assert cache.get("b", compute(4))[0][0, 0] == 4


def test_trained_on_knows_a_training_image_under_another_name(case):
    from dataclasses import replace

    from vessel_core.cases import image_fingerprints
    from vessel_core.compare import trained_on

    class Model:
        meta = {"train_cases": ["c"], "train_images": image_fingerprints([case])}

    renamed = replace(case, id="renamed")
    other = replace(case, image=np.full_like(case.image, 9))  # id "c", other image
    assert trained_on(Model(), [renamed, other]) == ["renamed"]

    class Older:  # saved before image fingerprints: by id
        meta = {"train_cases": ["c"]}

    assert trained_on(Older(), [renamed, other]) == ["c"]


def test_trained_on_counts_the_images_of_the_model_it_started_from(case):
    from dataclasses import replace

    from vessel_core.cases import image_fingerprints
    from vessel_core.compare import trained_on

    earlier = replace(case, id="e", image=np.full_like(case.image, 7))
    fresh = replace(case, id="f", image=np.full_like(case.image, 3))

    class Tuned:  # fine-tuned on "c", from a model that learned from "e"
        meta = {
            "train_images": image_fingerprints([case]),
            "started_from": {"learned_images": image_fingerprints([earlier])},
        }

    assert trained_on(Tuned(), [case, earlier, fresh]) == ["c", "e"]
