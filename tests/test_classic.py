"""Classic filters baseline: ridge responses and a logistic fit."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import line_case

from vessel_core import metrics, store
from vessel_core.classic import ClassicFilters
from vessel_core.knn import FitStopped
from vessel_core.progress import StopFlag


@pytest.fixture(scope="module")
def cases():
    return [line_case("a", 0.0, -20, 1), line_case("b", 1.2, 10, 2)]


@pytest.fixture(scope="module")
def fitted(cases):
    return ClassicFilters().fit(cases)


def test_a_dark_line_is_found(fitted):
    case = line_case("t", 0.5, 15, 9)
    prob = fitted.predict_proba(case)
    assert prob.dtype == np.float32 and prob.shape == case.fov_mask.shape
    assert (prob[~case.fov_mask] == 0).all() and prob.max() <= 1.0
    figures = metrics.score(case.vessel_mask, prob, case.fov_mask, fitted.threshold)
    assert figures["auc_roc"] > 0.97
    assert figures["f1"] > 0.6
    names = fitted.meta["feature_names"]
    assert names[0] == "hessian_ridge(s=1)" and names[-1] == "green"
    assert len(names) == 3 + 3 + 1 and len(fitted.coef_) == 2 * len(names)


def test_scikit_image_ridge_filters_can_be_chosen(cases):
    model = ClassicFilters(ridge="sato", sigmas=[1, 2], morlet=False).fit(cases[:1])
    assert model.feature_names() == ["sato(s=1,2)", "green"]
    assert model.settings["sigmas"] == "1,2"
    case = line_case("t", 0.5, 15, 9)
    prob = model.predict_proba(case)
    auc = metrics.score(case.vessel_mask, prob, case.fov_mask, model.threshold)
    assert auc["auc_roc"] > 0.9


def test_save_load_round_trip_gives_identical_maps(fitted, tmp_path):
    loaded = store.load_model(store.save_model(fitted, tmp_path / "classic"))
    assert isinstance(loaded, ClassicFilters)
    assert loaded.threshold == fitted.threshold
    case = line_case("t", 0.5, 15, 9)
    np.testing.assert_allclose(
        loaded.predict_proba(case), fitted.predict_proba(case), atol=1e-6
    )


def test_stop_flag_ends_the_fit(cases):
    stop = StopFlag()
    stop.set()
    with pytest.raises(FitStopped):
        ClassicFilters().fit(cases, stop=stop)


def test_settings_are_checked():
    assert ClassicFilters.default_settings()["ridge"] == "hessian"
    with pytest.raises(ValueError, match="ridge must be one of"):
        ClassicFilters(ridge="canny")
    with pytest.raises(ValueError, match="sigmas must be"):
        ClassicFilters(sigmas="1,x")
    with pytest.raises(ValueError, match=r"no setting\(s\) \['k'\]"):
        ClassicFilters(k=3)
    with pytest.raises(ValueError, match="not fitted"):
        ClassicFilters().predict_proba(np.zeros((8, 8, 3), np.uint8))


def test_masks_without_vessels_are_refused_naming_the_cases(cases):
    from dataclasses import replace

    blank = [
        replace(c, id=f"blank{i}", vessel_mask=np.zeros_like(c.vessel_mask))
        for i, c in enumerate(cases[:2])
    ]
    with pytest.raises(ValueError) as info:
        ClassicFilters().fit(blank)
    message = str(info.value)
    assert "only one class (background): a fit needs vessel pixels too" in message
    assert "the vessel masks of blank0, blank1 have no vessel pixel in the FOV" in (
        message
    )


def test_a_case_whose_mask_holds_one_class_is_left_out_with_a_warning(cases):
    from dataclasses import replace

    blank = replace(
        cases[0], id="blank", vessel_mask=np.zeros_like(cases[0].vessel_mask)
    )
    with pytest.warns(UserWarning, match=r"left out of training: blank \(their"):
        model = ClassicFilters().fit([blank, *cases[1:]])
    assert "blank" not in model.meta["train_cases"]
