"""Tests for vessel_core.metrics: hand-computed tables, exact areas, pooling."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from vessel_core import metrics
from vessel_core.cases import Case
from vessel_core.metrics import UndefinedMetricWarning


def _case(cid, y_true, fov=None, split="test"):
    y_true = np.asarray(y_true, dtype=bool)
    fov = np.ones_like(y_true) if fov is None else np.asarray(fov, dtype=bool)
    image = np.zeros(y_true.shape + (3,), dtype=np.uint8)
    return Case(cid, image, fov, y_true, split=split)


# ---------------------------------------------------------------------------
# Confusion tables


def test_confusion_2x2():
    y_true = np.array([[1, 0], [1, 0]], dtype=bool)
    y_prob = np.array([[0.9, 0.6], [0.2, 0.1]])

    assert metrics.confusion(y_true, y_prob) == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert metrics.confusion(y_true, y_prob, threshold=0.15) == {
        "tp": 2,
        "fp": 1,
        "tn": 1,
        "fn": 0,
    }


def test_score_2x2_by_hand():
    y_true = np.array([[1, 0], [1, 0]], dtype=bool)
    y_prob = np.array([[0.9, 0.6], [0.2, 0.1]])

    s = metrics.score(y_true, y_prob)

    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (1, 1, 1, 1)
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1"):
        assert s[key] == pytest.approx(0.5), key
    assert s["iou"] == pytest.approx(1 / 3)
    assert s["mcc"] == pytest.approx(0.0)
    # pairs (vessel, background): 0.9>0.6, 0.9>0.1, 0.2<0.6, 0.2>0.1
    assert s["auc_roc"] == pytest.approx(3 / 4)
    # thresholds 0.9 (P=1, R=1/2), 0.6, 0.2 (P=2/3, R=1)
    assert s["auc_pr"] == pytest.approx(1 / 2 * 1 + 1 / 2 * 2 / 3)
    assert list(s) == list(metrics.SCORE_KEYS)


def test_score_3x3_fov_excludes_pixels():
    y_true = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    y_pred = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=bool)
    fov = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1]], dtype=bool)

    everywhere = metrics.confusion(y_true, y_pred)
    s = metrics.score(y_true, y_pred, fov)

    # (2, 0) is a true negative and (2, 1) a false positive, both outside the FOV
    assert everywhere == {"tp": 3, "fp": 2, "tn": 3, "fn": 1}
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (3, 1, 2, 1)
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["sensitivity"] == pytest.approx(3 / 4)
    assert s["specificity"] == pytest.approx(2 / 3)
    assert s["precision"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(6 / 8)
    assert s["iou"] == pytest.approx(3 / 5)
    assert s["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert s["g_mean"] == pytest.approx(math.sqrt(3 / 4 * 2 / 3))
    assert s["mcc"] == pytest.approx((3 * 2 - 1 * 1) / math.sqrt(4 * 4 * 3 * 3))
    # a binary prediction ranks as two levels: AUC is the balanced accuracy
    assert s["auc_roc"] == pytest.approx(s["balanced_accuracy"])


def test_fov_as_0_1_integers_and_no_fov():
    y_true = np.array([1, 0, 1, 0])
    y_pred = np.array([True, True, False, False])

    assert metrics.confusion(y_true, y_pred, fov=np.array([1, 0, 1, 1])) == {
        "tp": 1,
        "fp": 0,
        "tn": 1,
        "fn": 1,
    }
    assert metrics.confusion(y_true, y_pred)["fp"] == 1


# ---------------------------------------------------------------------------
# Prediction types and thresholds


def test_uint8_is_read_as_value_over_255():
    y_true = np.array([1, 1, 0, 0], dtype=bool)
    grey = np.array([255, 128, 127, 0], dtype=np.uint8)

    # 128 / 255 = 0.502 >= 0.5 > 127 / 255
    assert metrics.confusion(y_true, grey) == {"tp": 2, "fp": 0, "tn": 2, "fn": 0}
    s = metrics.score(y_true, grey, threshold=128 / 255)
    assert s["tp"] == 2 and s["fp"] == 0
    assert metrics.score(y_true, grey)["auc_roc"] == pytest.approx(
        metrics.score(y_true, grey / 255.0)["auc_roc"]
    )


def test_binary_png_values_equal_bool_prediction():
    y_true = np.array([1, 1, 0, 0, 1], dtype=bool)
    y_pred = np.array([1, 0, 1, 0, 1], dtype=bool)

    as_bool = metrics.score(y_true, y_pred)
    as_grey = metrics.score(y_true, y_pred.astype(np.uint8) * 255)

    assert as_bool == pytest.approx(as_grey)


def test_float32_and_float64_agree():
    rng = np.random.default_rng(0)
    y_true = rng.random(500) < 0.3
    y_prob = rng.random(500).astype(np.float32)

    assert metrics.score(y_true, y_prob) == pytest.approx(
        metrics.score(y_true, y_prob.astype(np.float64))
    )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        (np.zeros((2, 2), bool), np.zeros((2, 3)), "same shape"),
        (np.zeros(3, bool), np.array([0.1, 1.2, 0.3]), r"\[0, 1\].*1\.2"),
        (np.zeros(3, bool), np.array([0.1, np.nan, 0.3]), r"\[0, 1\]"),
        (np.array([0, 2, 1]), np.zeros(3), "y_true must be a bool or 0/1"),
        (np.zeros(3, bool), np.array([0, 3, 1]), "uint8 0-255 or 0/1"),
        (np.zeros(3, bool), np.array(["a", "b", "c"]), "dtype <U1"),
    ],
)
def test_bad_input_names_what_is_wrong(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        metrics.score(y_true, y_pred)


def test_bad_fov_and_threshold():
    y = np.zeros((2, 2), bool)
    with pytest.raises(ValueError, match=r"fov must have the shape.*\(2, 2\)"):
        metrics.score(y, y, fov=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="threshold must be in"):
        metrics.confusion(y, y, threshold=1.5)
    with pytest.raises(ValueError, match="threshold must be in"):
        metrics.score(y, y, threshold=float("nan"))


# ---------------------------------------------------------------------------
# Areas under the curves


def test_perfect_and_inverted_predictions():
    y_true = np.array([1, 1, 0, 0], dtype=bool)
    perfect = np.array([0.8, 0.9, 0.1, 0.2])
    inverted = 1 - perfect

    good = metrics.score(y_true, perfect)
    bad = metrics.score(y_true, inverted)

    assert good["auc_roc"] == 1.0 and good["auc_pr"] == 1.0
    assert good["f1"] == 1.0 and good["mcc"] == pytest.approx(1.0)
    assert bad["auc_roc"] == 0.0
    # thresholds 0.9, 0.8 (background), 0.2 (P=1/3, R=1/2), 0.1 (P=1/2, R=1)
    assert bad["auc_pr"] == pytest.approx(1 / 2 * 1 / 3 + 1 / 2 * 1 / 2)
    assert bad["mcc"] == pytest.approx(-1.0)


def test_ties_count_one_half():
    y_true = np.array([1, 0, 1, 0], dtype=bool)
    y_prob = np.array([0.5, 0.5, 0.7, 0.2])

    s = metrics.score(y_true, y_prob)

    # pairs: 0.5=0.5 (1/2), 0.5>0.2, 0.7>0.5, 0.7>0.2
    assert s["auc_roc"] == pytest.approx(3.5 / 4)
    # thresholds 0.7 (P=1, R=1/2), 0.5 (P=2/3, R=1): tied pixels enter together
    assert s["auc_pr"] == pytest.approx(1 / 2 + 1 / 2 * 2 / 3)
    with pytest.warns(UndefinedMetricWarning, match="precision"):
        assert metrics.score(y_true, np.full(4, 0.3))["auc_roc"] == 0.5


def test_areas_match_sklearn_on_random_maps():
    rng = np.random.default_rng(0)
    y_true = rng.random((60, 70)) < 0.15
    fov = rng.random((60, 70)) < 0.8
    y_prob = np.clip(0.35 * y_true + rng.random((60, 70)) * 0.65, 0, 1)
    y_prob[::2] = np.round(y_prob[::2], 2)  # plenty of ties
    grey = np.round(y_prob * 255).astype(np.uint8)

    for pred in (y_prob, y_prob.astype(np.float32), grey):
        s = metrics.score(y_true, pred, fov)
        truth, p = y_true[fov], pred[fov]
        assert_allclose(s["auc_roc"], roc_auc_score(truth, p), rtol=1e-12)
        assert_allclose(s["auc_pr"], average_precision_score(truth, p), rtol=1e-12)


# ---------------------------------------------------------------------------
# Undefined figures


def test_mask_without_vessels_gives_nan_and_one_warning():
    y_true = np.zeros((2, 2), dtype=bool)
    y_prob = np.array([[0.9, 0.1], [0.2, 0.3]])

    with pytest.warns(UndefinedMetricWarning, match="no vessel pixel") as record:
        s = metrics.score(y_true, y_prob)

    assert len(record) == 1
    assert record[0].filename == __file__  # stacklevel points at the caller
    for key in ("sensitivity", "auc_roc", "auc_pr", "balanced_accuracy", "mcc"):
        assert math.isnan(s[key]), key
    assert s["precision"] == 0.0 and s["f1"] == 0.0
    assert s["specificity"] == pytest.approx(3 / 4)


def test_mask_all_vessel_gives_nan_specificity():
    y_true = np.ones(3, dtype=bool)

    with pytest.warns(UndefinedMetricWarning, match="specificity"):
        s = metrics.score(y_true, np.array([0.9, 0.2, 0.6]))

    assert math.isnan(s["specificity"]) and math.isnan(s["auc_roc"])
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert s["auc_pr"] == 1.0  # every pixel is a vessel: precision is always 1


def test_empty_prediction_on_empty_mask():
    y_true = np.zeros((3, 3), dtype=bool)
    y_pred = np.zeros((3, 3), dtype=bool)

    with pytest.warns(UndefinedMetricWarning, match="calls no pixel a vessel"):
        s = metrics.score(y_true, y_pred)

    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (0, 0, 9, 0)
    assert s["accuracy"] == 1.0 and s["specificity"] == 1.0
    nan_keys = [k for k in metrics.SCORE_KEYS[4:] if math.isnan(s[k])]
    assert nan_keys == [
        "sensitivity",
        "precision",
        "f1",
        "iou",
        "balanced_accuracy",
        "g_mean",
        "mcc",
        "auc_roc",
        "auc_pr",
    ]


def test_empty_fov_is_all_nan():
    y = np.ones((2, 2), bool)
    with pytest.warns(UndefinedMetricWarning, match="FOV holds no pixel"):
        s = metrics.score(y, y, fov=np.zeros((2, 2), bool))
    assert s["tp"] + s["fp"] + s["tn"] + s["fn"] == 0
    assert all(math.isnan(s[k]) for k in metrics.SCORE_KEYS[4:])


def test_defined_figures_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.score(np.array([1, 0], bool), np.array([0.7, 0.2]))


# ---------------------------------------------------------------------------
# Curves


def test_roc_curve_ends_area_and_downsampling():
    rng = np.random.default_rng(1)
    y_true = rng.random(20_000) < 0.2
    y_prob = np.clip(0.3 * y_true + 0.7 * rng.random(20_000), 0, 1)

    fpr, tpr, thr = metrics.roc_curve(y_true, y_prob, max_points=10**6)
    small = metrics.roc_curve(y_true, y_prob)

    assert len(fpr) == len(np.unique(y_prob)) + 1
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(thr) < 0)
    assert_allclose(np.trapezoid(tpr, fpr), metrics.score(y_true, y_prob)["auc_roc"])
    assert len(small[0]) <= 500
    assert (small[0][0], small[1][0], small[0][-1], small[1][-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(small[2]) < 0)
    assert_allclose(np.trapezoid(small[1], small[0]), np.trapezoid(tpr, fpr), atol=1e-3)


def test_pr_curve_by_hand():
    y_true = np.array([1, 0, 1, 0], dtype=bool)
    y_prob = np.array([0.5, 0.5, 0.7, 0.2])

    recall, precision, thr = metrics.pr_curve(y_true, y_prob)

    assert_allclose(recall, [0, 0.5, 1, 1])
    assert_allclose(precision, [1, 1, 2 / 3, 1 / 2])
    assert_allclose(thr, [np.inf, 0.7, 0.5, 0.2])


def test_curves_pool_a_sequence_of_images():
    a_true, a_prob = np.array([[1, 0]], bool), np.array([[0.9, 0.4]])
    b_true, b_prob = np.array([[0, 1]], bool), np.array([[0.6, 0.3]])

    pooled = metrics.roc_curve([a_true, b_true], [a_prob, b_prob])
    joined = metrics.roc_curve(
        np.concatenate([a_true, b_true]), np.concatenate([a_prob, b_prob])
    )

    for got, want in zip(pooled, joined, strict=True):
        assert_allclose(got, want)


def test_one_class_curve_warns():
    with pytest.warns(UndefinedMetricWarning, match="no vessel pixel"):
        fpr, tpr, _ = metrics.roc_curve(np.zeros(3, bool), np.array([0.1, 0.5, 0.9]))
    assert np.isnan(tpr[1:]).all() and fpr[-1] == 1.0


# ---------------------------------------------------------------------------
# Many cases


def test_evaluate_mean_and_pooled_differ():
    a = _case("a", [[1, 0], [0, 0]])
    b = _case("b", [[1, 1], [1, 0]])
    pred_a = np.array([[1, 0], [0, 0]], dtype=bool)  # tp 1, tn 3
    pred_b = np.array([[1, 0], [0, 0]], dtype=bool)  # tp 1, fn 2, tn 1

    report = metrics.evaluate([a, b], [pred_a, pred_b])

    assert [row["id"] for row in report.cases] == ["a", "b"]
    assert report.cases[1]["sensitivity"] == pytest.approx(1 / 3)
    assert report.mean["sensitivity"] == pytest.approx((1 + 1 / 3) / 2)
    assert report.pooled["sensitivity"] == pytest.approx(2 / 4)
    assert report.mean["f1"] == pytest.approx((1 + 2 / 4) / 2)
    assert report.pooled["f1"] == pytest.approx(4 / 6)
    assert (report.pooled["tp"], report.pooled["fn"], report.pooled["tn"]) == (2, 2, 4)
    assert "tp" not in report.mean


def test_evaluate_pooled_area_is_over_concatenated_pixels():
    rng = np.random.default_rng(2)
    masks = [rng.random((8, 9)) < 0.3 for _ in range(3)]
    fovs = [rng.random((8, 9)) < 0.8 for _ in range(3)]
    probs = [rng.random((8, 9)) for _ in range(3)]
    cases = [
        _case(str(i), m, f) for i, (m, f) in enumerate(zip(masks, fovs, strict=True))
    ]

    report = metrics.evaluate(cases, probs, threshold=0.4)

    truth = np.concatenate([m[f] for m, f in zip(masks, fovs, strict=True)])
    joined = np.concatenate([p[f] for p, f in zip(probs, fovs, strict=True)])
    assert report.pooled == pytest.approx(metrics.score(truth, joined, threshold=0.4))
    assert report.pooled["auc_roc"] == pytest.approx(roc_auc_score(truth, joined))
    assert report.threshold == 0.4
    fpr, tpr, _ = report.roc_curve()
    assert_allclose(np.trapezoid(tpr, fpr), report.pooled["auc_roc"])


def test_evaluate_skips_and_notes():
    with_mask = _case("01", [[1, 0], [0, 0]])
    no_vessels = _case("02", [[0, 0], [0, 0]])
    no_mask = Case("03", np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool))
    maps = {"01": np.array([[0.9, 0.1], [0.2, 0.3]]), "02": np.zeros((2, 2))}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # per-case problems become notes, not warnings
        report = metrics.evaluate([with_mask, no_vessels, no_mask], maps)

    assert [row["id"] for row in report.cases] == ["01", "02"]
    assert any("03: no vessel mask" in note for note in report.notes)
    assert any(n.startswith("mean sensitivity over 1 of 2 cases") for n in report.notes)
    assert report.mean["sensitivity"] == 1.0
    assert report.mean["accuracy"] == 1.0


def test_evaluate_missing_map_and_bad_size():
    a, b = _case("a", [[1, 0]]), _case("b", [[0, 1]])

    report = metrics.evaluate([a, b], {"a": np.array([[0.8, 0.1]])})
    assert [row["id"] for row in report.cases] == ["a"]
    assert any("b: no probability map" in note for note in report.notes)

    with pytest.raises(ValueError, match=r"case b: the probability map is \(3,\)"):
        metrics.evaluate([a, b], [np.zeros((1, 2)), np.zeros(3)])
    with pytest.raises(ValueError, match="one map per case: 2 cases, got 1"):
        metrics.evaluate([a, b], [np.zeros((1, 2))])


def test_report_to_json_is_strict_json():
    a = _case("a", [[0, 0]])  # no vessel: NaN figures
    with pytest.warns(UndefinedMetricWarning, match="pooled figures"):
        report = metrics.evaluate([a], [np.array([[0.2, 0.1]])], extra={"seconds": 1.5})

    out = report.to_json()
    text = json.dumps(out, allow_nan=False)

    assert {"cases", "mean", "pooled", "threshold", "notes", "seconds"} <= set(out)
    assert out["cases"][0]["sensitivity"] is None
    assert out["mean"]["sensitivity"] is None
    assert out["seconds"] == 1.5
    assert json.loads(text)["cases"][0]["id"] == "a"


def test_evaluate_with_nothing_to_score():
    report = metrics.evaluate([], [])
    assert report.cases == [] and "no case could be scored" in report.notes
    assert report.pooled["tp"] == 0 and math.isnan(report.pooled["f1"])


# ---------------------------------------------------------------------------
# Threshold


def test_best_threshold_separable_toy():
    y_true = [np.array([0, 0, 0, 1, 1], bool), np.array([1, 0], bool)]
    y_prob = [np.array([0.1, 0.2, 0.3, 0.7, 0.8]), np.array([0.9, 0.25])]

    t = metrics.best_threshold(y_true, y_prob)

    # every level in (0.3, 0.7] separates the classes; the middle one is returned
    assert t == 0.5
    for truth, prob in zip(y_true, y_prob, strict=True):
        assert metrics.score(truth, prob, threshold=t)["f1"] == 1.0


def test_best_threshold_is_the_best_level():
    rng = np.random.default_rng(3)
    y_true = [rng.random((30, 30)) < 0.2 for _ in range(2)]
    y_prob = [np.clip(0.25 * m + 0.75 * rng.random(m.shape), 0, 1) for m in y_true]
    fov = [rng.random((30, 30)) < 0.9 for _ in range(2)]

    def pooled_f1(t):
        counts = [
            metrics.confusion(m, p, f, t)
            for m, p, f in zip(y_true, y_prob, fov, strict=True)
        ]
        tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp", "fp", "fn"))
        return 2 * tp / (2 * tp + fp + fn)

    t = metrics.best_threshold(y_true, y_prob, fov)
    best = max(pooled_f1(level) for level in np.linspace(0, 1, 101))

    assert pooled_f1(t) >= best
    assert 0.0 < t < 1.0


def test_best_threshold_checks():
    with pytest.raises(ValueError, match="metric must be one of"):
        metrics.best_threshold([], [], metric="auc")
    with pytest.raises(ValueError, match="as long as each other"):
        metrics.best_threshold([np.zeros(2, bool)], [])
    with pytest.warns(UndefinedMetricWarning, match="one class"):
        assert metrics.best_threshold([np.zeros(2, bool)], [np.zeros(2)]) == 0.5


# ---------------------------------------------------------------------------
# Real data


def _gif_mask(path):
    return np.asarray(Image.open(path).convert("L")) > 127


@pytest.mark.drive
def test_drive_second_observer_pooled(drive_root):
    test = drive_root / "test"
    first, second, fovs = [], [], []
    for n in range(1, 21):
        first.append(_gif_mask(test / "1st_manual" / f"{n:02d}_manual1.gif"))
        second.append(_gif_mask(test / "2nd_manual" / f"{n:02d}_manual2.gif"))
        fovs.append(_gif_mask(test / "mask" / f"{n:02d}_test_mask.gif"))
    cases = [
        _case(f"{n:02d}", m, f)
        for n, (m, f) in enumerate(zip(first, fovs, strict=True), 1)
    ]

    pooled = metrics.evaluate(cases, second).pooled

    assert round(pooled["accuracy"], 4) == 0.9473
    assert round(pooled["sensitivity"], 4) == 0.7746
    assert round(pooled["specificity"], 4) == 0.9725
    assert round(pooled["f1"], 3) == 0.789
