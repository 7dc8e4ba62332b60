"""KNN: the screened classifier, grouped CV, the model kind, saving, DRIVE."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from synthetic import line_case

from vessel_core import metrics, store
from vessel_core.cases import Case
from vessel_core.knn import (
    FitStopped,
    KNNClassifier,
    KNNModel,
    block_centres,
    choose_k,
    fill_blocks,
    grouped_folds,
)
from vessel_core.progress import Progress, StopFlag

# -- synthetic data -------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_cases() -> list[Case]:
    return [
        line_case("a", 0.0, -20, 1),
        line_case("b", 1.0, 10, 2),
        line_case("c", 2.0, 25, 3),
        line_case("d", 2.6, -5, 4),
    ]


@pytest.fixture(scope="module")
def test_case() -> Case:
    return line_case("t", 0.5, 15, 9)


SMALL = {
    "max_train_samples": 2000,
    "screen_pixels_per_case": 1500,
    "threshold_cases": 2,
    "k_max": 7,
    "n_folds": 2,
}


@pytest.fixture(scope="module")
def fitted(train_cases) -> KNNModel:
    return KNNModel(**SMALL).fit(train_cases)


def blobs(n: int = 3000, seed: int = 0):
    """Two overlapping Gaussian classes in 6-D, in 10 groups."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.4 * rng.standard_normal(n) > 0.7
    groups = np.repeat(np.arange(10), n // 10)
    return X, y, groups


# -- the classifier ------------------------------------------------------------------


def test_exact_search_matches_scikit_learn():
    X, y, _ = blobs()
    Xq = np.random.default_rng(1).standard_normal((500, 6)).astype(np.float32)
    ours = KNNClassifier(n_neighbors=9, search="exact").fit(X, y)
    theirs = KNeighborsClassifier(n_neighbors=9).fit(X, y)
    np.testing.assert_array_equal(ours.predict_proba(Xq), theirs.predict_proba(Xq))
    np.testing.assert_array_equal(ours.predict(Xq), theirs.predict(Xq))
    np.testing.assert_array_equal(ours.classes_, [False, True])


def test_screened_search_keeps_the_labels():
    X, y, groups = blobs(4000)
    Xq = np.random.default_rng(2).standard_normal((4000, 6)).astype(np.float32)
    clf = KNNClassifier(n_neighbors=15).fit(X, y, groups=groups)
    exact = KNeighborsClassifier(n_neighbors=15).fit(X, y).predict(Xq)
    assert clf.screen_stats_["coverage"] > 0.4
    assert clf.screen_low_ < 0.5 < clf.screen_high_
    assert np.mean(clf.predict(Xq) == exact) >= 0.99
    assert clf.screened_share(Xq) > 0.4


def test_chunked_prediction_equals_unchunked():
    X, y, groups = blobs()
    Xq = np.random.default_rng(3).standard_normal((1000, 6)).astype(np.float32)
    clf = KNNClassifier(n_neighbors=7).fit(X, y, groups=groups)
    whole = clf.predict_proba(Xq)
    clf.chunk_size = 77
    chunked = clf.predict_proba(Xq)
    # BLAS sums the surrogate's products in an order that depends on the block
    # of rows: equal to float32 rounding; the exact votes are equal outright
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    exact = ~clf._screen_mask(Xq)
    np.testing.assert_array_equal(chunked[exact], whole[exact])
    np.testing.assert_array_equal(chunked.argmax(1), whole.argmax(1))


def test_leaving_a_group_out_drops_its_samples():
    X = np.array([[0.0], [0.1], [5.0], [5.1]], np.float32)
    y = np.array([1, 1, 0, 0])
    clf = KNNClassifier(n_neighbors=1, search="exact").fit(
        X, y, groups=["p", "p", "q", "q"]
    )
    assert clf.predict([[0.05]])[0] == 1
    assert clf.predict([[0.05]], exclude_group="p")[0] == 0


def test_bad_input_is_refused():
    X, y, _ = blobs(100)
    with pytest.raises(
        ValueError, match=r"n_neighbors must be in \[1, n_samples=100\]"
    ):
        KNNClassifier(n_neighbors=101).fit(X, y)
    with pytest.raises(ValueError, match="search must be one of"):
        KNNClassifier(search="fast").fit(X, y)
    clf = KNNClassifier(search="exact").fit(X, y)
    with pytest.raises(
        ValueError, match="X has 5 features; the classifier was fitted on 6"
    ):
        clf.predict(np.zeros((2, 5)))


# -- choosing k ----------------------------------------------------------------------


def test_grouped_folds_never_share_a_case():
    groups = np.repeat(list("abcdefg"), 13)
    for train, held in grouped_folds(groups, 3):
        assert not set(groups[train]) & set(groups[held])
        assert len(train) + len(held) == len(groups)


def test_cv_scores_a_new_case_not_a_seen_one():
    # every point appears twice within its case: a leaky split finds its twin
    rng = np.random.default_rng(0)
    X = np.repeat(rng.standard_normal((200, 4)).astype(np.float32), 2, axis=0)
    y = np.repeat(rng.random(200) < 0.5, 2)
    groups = np.repeat(np.arange(10), 40)
    choice = choose_k(X, y, groups, ks=[1], n_folds=5)
    assert choice.mean_scores[1] < 0.75  # random labels: about 0.5, never 1.0


def test_cv_callback_gets_every_k_and_fold():
    X, y, groups = blobs(600)
    events: list[Progress] = []
    choice = choose_k(X, y, groups, ks=[1, 3, 5], n_folds=3, on_result=events.append)
    assert [(e.metrics["k"], e.metrics["fold"]) for e in events] == [
        (k, f) for f in range(3) for k in (1, 3, 5)
    ]
    assert all(e.step == "cv" and 0 <= e.metrics["score"] <= 1 for e in events)
    assert events[-1].done == events[-1].total == 9
    assert choice.k in (1, 3, 5) and not choice.stopped
    assert choice.mean_scores[choice.best_k] == max(choice.mean_scores.values())


def test_cv_takes_the_smallest_k_within_one_standard_error_of_the_best():
    X, y, groups = blobs(3000)
    ks = list(range(1, 80, 2))
    choice = choose_k(X, y, groups, ks=ks, n_folds=5)
    best = choice.best_k
    folds = [r["score"] for r in choice.results if r["k"] == best]
    se = np.std(folds, ddof=1) / np.sqrt(len(folds))
    assert choice.standard_error == pytest.approx(se)
    floor = choice.mean_scores[best] - se
    assert choice.mean_scores[choice.k] >= floor
    assert all(choice.mean_scores[k] < floor for k in ks if k < choice.k)
    assert choice.k < best  # the curve levels off: the plateau's start, not its end
    assert choice.n_folds == 5
    # at most one fold per case: 3 cases give 3 folds, and the fit says so
    three = groups % 3
    assert choose_k(X, y, three, ks=[1, 3], n_folds=5).n_folds == 3


def test_cv_stops_between_folds():
    X, y, groups = blobs(600)
    stop = StopFlag()
    events = []

    def on_result(event):
        events.append(event)
        stop.set()

    choice = choose_k(
        X, y, groups, ks=[1, 3], n_folds=3, on_result=on_result, stop=stop
    )
    assert choice.stopped
    assert len(events) == 2  # the first fold's two results, then stop
    with pytest.raises(ValueError, match="at least 2 cases"):
        choose_k(X, y, np.zeros(len(X)), ks=[1])


# -- blocks --------------------------------------------------------------------------


def test_block_centres_and_filling():
    fov = np.zeros((7, 8), bool)
    fov[1:, :] = True
    centres = block_centres(fov, 3)
    # tiles of rows 0-2, 3-5, 6 and cols 0-2, 3-5, 6-7; a cut tile's centre is
    # the middle of its part inside the image
    assert sorted({int(r) for r in centres[:, 0]}) == [1, 4, 6]
    assert sorted({int(c) for c in centres[:, 1]}) == [1, 4, 7]
    filled = fill_blocks(fov.shape, centres, np.arange(len(centres), dtype=float), 3)
    np.testing.assert_array_equal(filled[0:3, 0:3], 0.0)
    np.testing.assert_array_equal(filled[3:6, 6:8], 5.0)
    np.testing.assert_array_equal(filled[6, 3:6], 7.0)


def test_block_rebuild_fills_whole_blocks(train_cases, test_case):
    settings = {**SMALL, "patch_size": 3, "n_neighbors": 5, "smooth_sigma": 0.0}
    blocky = KNNModel(**settings, rebuild="block").fit(train_cases[:2])
    prob = blocky.predict_proba(test_case)
    inner = np.zeros_like(test_case.fov_mask)
    inner[30:129, 30:129] = True  # whole 3x3 tiles well inside the FOV
    tiles = prob[30:129, 30:129].reshape(33, 3, 33, 3)
    assert (tiles == tiles[:, :1, :, :1]).all()
    assert len(np.unique(prob[inner])) > 2


# -- the model kind ------------------------------------------------------------------


def test_a_dark_line_is_found(fitted, test_case):
    prob = fitted.predict_proba(test_case)
    assert prob.dtype == np.float32 and prob.shape == test_case.fov_mask.shape
    assert (prob[~test_case.fov_mask] == 0).all()
    figures = metrics.score(
        test_case.vessel_mask, prob, test_case.fov_mask, fitted.threshold
    )
    assert figures["auc_roc"] > 0.97
    assert figures["f1"] > 0.6
    meta = fitted.meta
    assert meta["train_cases"] == ["a", "b", "c", "d"]
    assert meta["chosen_k"] in (1, 3, 5, 7)
    assert len(meta["cv_scores"]) == 4 * 2 and meta["cv_folds"] == 2
    assert meta["feature_names"][0] == "green[+0,+0]"
    assert 0 < fitted.threshold < 1


def test_fit_reports_progress(train_cases):
    events: list[Progress] = []
    KNNModel(**SMALL, n_neighbors=3).fit(train_cases[:2], on_progress=events.append)
    steps = [e.step for e in events]
    assert steps.count("features") == 2
    assert "cv" not in steps  # a fixed k needs no CV
    assert steps[-1] == "done"


def test_stop_flag_ends_the_fit(train_cases):
    stop = threading.Event()

    def on_progress(event):
        if event.step == "features":
            stop.set()

    with pytest.raises(FitStopped, match="stopped while computing features"):
        KNNModel(**SMALL).fit(train_cases, on_progress=on_progress, stop=stop)


def test_stop_during_cv_keeps_the_best_k_so_far(train_cases, test_case):
    stop = threading.Event()
    cv_events = []

    def on_progress(event):
        if event.step == "cv":
            cv_events.append(event)
            stop.set()  # after the first fold's results

    model = KNNModel(**SMALL).fit(train_cases, on_progress=on_progress, stop=stop)
    assert "during cross-validation" in model.meta["stopped_early"]
    n_ks = len(model.meta["cv_mean_scores"])
    assert len(model.meta["cv_scores"]) == n_ks < len(cv_events) + n_ks
    assert model.predict_proba(test_case).shape == test_case.shape
    # the stop also skips the context stage: a whole one-stage model
    assert model.context_classifier is None
    assert model.settings["context"] is False


def test_stop_during_the_context_stage_keeps_the_first_stage(
    train_cases, test_case, tmp_path
):
    stop = threading.Event()

    def on_progress(event):
        if event.step == "context":
            stop.set()  # after the first case's context

    settings = {**SMALL, "threshold_cases": 4, "n_neighbors": 5}
    model = KNNModel(**settings).fit(train_cases, on_progress=on_progress, stop=stop)
    assert "during the context stage" in model.meta["stopped_early"]
    assert len(model.meta["scores"]["cases"]) == 2  # a quick threshold after a stop
    assert model.context_classifier is None
    assert model.settings["context"] is False
    assert model.meta["settings"]["context"] is False
    loaded = store.load_model(store.save_model(model, tmp_path / "stopped"))
    np.testing.assert_allclose(
        loaded.predict_proba(test_case), model.predict_proba(test_case), atol=1e-6
    )


def test_save_load_round_trip_gives_identical_maps(fitted, test_case, tmp_path):
    folder = store.save_model(fitted, tmp_path / "knn-line")
    assert (folder / "arrays.npz").is_file()
    loaded = store.load_model(folder)
    assert isinstance(loaded, KNNModel)
    assert loaded.threshold == fitted.threshold
    assert loaded.meta["chosen_k"] == fitted.meta["chosen_k"]
    n_features = fitted.classifier.n_features_in_
    rows = (
        np.random.default_rng(0).standard_normal((500, n_features)).astype(np.float32)
    )
    np.testing.assert_array_equal(
        loaded.classifier.predict_proba(rows), fitted.classifier.predict_proba(rows)
    )
    np.testing.assert_allclose(
        loaded.predict_proba(test_case), fitted.predict_proba(test_case), atol=1e-6
    )


def test_the_context_stage_is_fitted_saved_and_loaded(fitted, test_case, tmp_path):
    from vessel_core import features as ft

    n_first = fitted.classifier.n_features_in_
    assert fitted.context_classifier is not None
    assert fitted.context_classifier.n_features_in_ == n_first + len(ft.context_names())
    assert fitted.meta["context"]["feature_names"] == ft.context_names()
    with np.load(store.save_model(fitted, tmp_path / "two") / "arrays.npz") as saved:
        assert {"X", "context_X", "context_w1"} <= set(saved.files)
    # the map is the second stage's: dropping it changes the map
    one_stage = KNNModel(**{**fitted.settings, "context": False})
    one_stage.classifier, one_stage.threshold = fitted.classifier, fitted.threshold
    assert not np.allclose(
        one_stage.predict_proba(test_case), fitted.predict_proba(test_case)
    )


def test_a_one_stage_model_saves_and_loads_without_context(
    train_cases, test_case, tmp_path
):
    model = KNNModel(**SMALL, context=False, n_neighbors=5).fit(train_cases[:2])
    assert model.context_classifier is None and "context" not in model.meta
    folder = store.save_model(model, tmp_path / "one")
    with np.load(folder / "arrays.npz") as saved:
        assert not any(name.startswith("context_") for name in saved.files)
    loaded = store.load_model(folder)
    assert loaded.context_classifier is None
    np.testing.assert_allclose(
        loaded.predict_proba(test_case), model.predict_proba(test_case), atol=1e-6
    )
    # a folder saved before the context stage existed names no such setting
    meta = store.read_meta(folder)
    del meta["settings"]["context"]
    (folder / "model.json").write_text(json.dumps(meta))
    assert store.load_model(folder).context_classifier is None
    # settings that name a context stage the arrays do not hold are refused
    meta["settings"]["context"] = True
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"arrays\.npz.*no context_\* arrays"):
        store.load_model(folder)


def test_the_context_stage_reports_progress_per_case(train_cases):
    events: list[Progress] = []
    KNNModel(**SMALL, n_neighbors=3).fit(train_cases[:3], on_progress=events.append)
    context = [e for e in events if e.step == "context"]
    assert [(e.done, e.total) for e in context] == [(1, 3), (2, 3), (3, 3)]
    fit = [(e.done, e.total) for e in events if e.step == "fit"]
    assert fit == [(0, 3), (1, 3), (2, 3)]
    # one event per whole training map of the threshold, within the last step
    threshold = [e for e in events if e.step == "threshold"]
    assert [e.fraction for e in threshold] == pytest.approx([4 / 6, 5 / 6])  # 2 maps
    assert "whole map of case" in threshold[0].message


def test_chunked_model_prediction_equals_unchunked(fitted, test_case):
    from vessel_core import features as ft

    planes = ft.compute_planes(test_case, settings=fitted.feature_settings)
    coords = np.argwhere(test_case.fov_mask)
    whole = fitted.predict_coords(planes, coords)
    chunked = fitted.predict_coords(planes, coords, chunk_size=1000)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(chunked > 0.5, whole > 0.5)


def test_settings_are_checked():
    assert KNNModel.default_settings()["features"] == "patch+bank"
    assert KNNModel.SETTING_CHOICES["rebuild"] == ["pixel", "block"]
    with pytest.raises(ValueError, match=r"KNNModel has no setting\(s\) \['colour'\]"):
        KNNModel(colour=True)
    with pytest.raises(ValueError, match=r"patch_size must be one of"):
        KNNModel(patch_size=4)
    with pytest.raises(ValueError, match="k_min .* must not exceed k_max"):
        KNNModel(k_min=9, k_max=3)
    with pytest.raises(ValueError, match="not trained"):
        KNNModel().predict_proba(np.zeros((8, 8, 3), np.uint8))


# -- DRIVE ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.drive
def test_small_knn_beats_the_classic_baseline_on_drive(drive_root):
    from vessel_core import io
    from vessel_core.cases import split_cases
    from vessel_core.classic import ClassicFilters

    found = io.discover(drive_root)
    train = split_cases(found.cases, "train")[:6]
    test = split_cases(found.cases, "test")[:2]
    knn = KNNModel(
        max_train_samples=6000,
        n_neighbors=15,
        screen_pixels_per_case=1500,
        threshold_cases=2,
    ).fit(train)
    classic = ClassicFilters().fit(train)
    for case in test:
        ours = metrics.score(case.vessel_mask, knn.predict_proba(case), case.fov_mask)
        base = metrics.score(
            case.vessel_mask, classic.predict_proba(case), case.fov_mask
        )
        assert ours["auc_roc"] > base["auc_roc"], case.id
        assert ours["auc_roc"] > 0.94, case.id
