"""Scoring a vessel segmentation against a manual vessel mask, inside the FOV.

Every figure counts only the pixels inside the FOV mask (all pixels when no FOV mask
is given). A prediction is one of:

- a probability map, float in [0, 1]; a pixel is called a vessel when its
  probability is ``>= threshold``;
- a grey map, ``uint8`` 0-255, read as probability ``value / 255`` (so a 0/255
  binary PNG is a binary prediction). A ``uint8`` array is always read this way: a
  0/1 ``uint8`` array is a map of probabilities 0 and 1/255; pass it as ``bool``;
- a binary prediction, ``bool`` (or an integer dtype other than ``uint8`` holding
  0/1), read as the probabilities 0 and 1.

The areas under the curves rank the pixels by their probability:

- ``auc_roc`` is exact: the Mann-Whitney statistic with tied scores counted one half,
  which equals the trapezoid area under the ROC curve through every distinct score;
- ``auc_pr`` is the average precision, the step sum
  ``sum_k (R_k - R_{k-1}) P_k`` over the distinct scores taken as thresholds, highest
  first (scikit-learn's ``average_precision_score``; no trapezoid, which
  over-estimates).

For a binary prediction both are computed from its two levels: ``auc_roc`` is then
the balanced accuracy.

A figure whose formula divides by zero is NaN, and `score` warns once with an
`UndefinedMetricWarning` naming the figures and why; nothing raises. In particular an
empty prediction on an empty vessel mask (no vessel pixel in the FOV, none
predicted) scores accuracy 1 and specificity 1, and NaN for sensitivity, precision,
F1, IoU, balanced accuracy, G-mean, MCC and both AUCs: there was nothing to find, so
how well it was found is undefined, and a mean over cases (which skips NaN) is not
pulled up or down by such a case. MCC is NaN whenever a row or column of the
confusion table is empty (scikit-learn returns 0 there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vessel_core.cases import Case
from vessel_core.progress import warn

#: The keys of `score`'s result, in order: counts first, then rates, then areas.
COUNT_KEYS = ("tp", "fp", "tn", "fn")
RATE_KEYS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "iou",
    "balanced_accuracy",
    "g_mean",
    "mcc",
)
AREA_KEYS = ("auc_roc", "auc_pr")
SCORE_KEYS = COUNT_KEYS + RATE_KEYS + AREA_KEYS

#: Figures `best_threshold` can maximise.
THRESHOLD_METRICS = ("f1", "iou", "accuracy", "balanced_accuracy", "g_mean", "mcc")

#: Candidate thresholds of `best_threshold`: 0, 0.001, ..., 1.
THRESHOLD_LEVELS = np.arange(1001) / 1000  # i / 1000 is the double nearest to it


class UndefinedMetricWarning(UserWarning):
    """A figure was 0/0 (one-class mask, no predicted vessel, empty FOV): NaN."""


# ---------------------------------------------------------------------------
# Inputs


def _as_binary(name: str, array: ArrayLike) -> NDArray[np.bool_]:
    """A bool array from a bool or 0/1 array; ValueError naming ``name`` otherwise."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a bool or 0/1 array, got dtype {array.dtype}")
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(str(v) for v in values[:5])
        raise ValueError(
            f"{name} must be a bool or 0/1 array (a vessel or FOV mask), got values "
            f"{shown}{'...' if len(values) > 5 else ''}"
        )
    return array.astype(bool)


def _as_probability(name: str, array: ArrayLike) -> NDArray[np.float64]:
    """Float64 probabilities from a bool, uint8 0-255 or float [0, 1] array."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.float64)
    if array.dtype == np.uint8:
        return array / 255.0
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"{name}: an integer prediction must be uint8 0-255 or 0/1, got "
                f"dtype {array.dtype} with values in [{array.min()}, {array.max()}]"
            )
        return array.astype(np.float64)
    if array.dtype.kind != "f":
        raise ValueError(
            f"{name} must be a float probability map, a uint8 grey map or a bool "
            f"prediction, got dtype {array.dtype}"
        )
    array = array.astype(np.float64, copy=False)
    _check_range(name, array)
    return array


def _check_range(name: str, array: NDArray[np.floating]) -> None:
    """ValueError unless every value is in [0, 1] (NaN is not)."""
    if array.size:
        low, high = float(np.min(array)), float(np.max(array))
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise ValueError(
                f"{name} must hold probabilities in [0, 1], got values in "
                f"[{low}, {high}]"
            )


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:  # also catches NaN
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return threshold


def _inside_fov(
    y_true: ArrayLike, y_pred: ArrayLike, fov: ArrayLike | None
) -> tuple[NDArray[np.bool_], NDArray]:
    """The vessel mask and the prediction inside the FOV, as two flat arrays."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred must have the same shape, got {y_true.shape} and "
            f"{y_pred.shape}"
        )
    truth = _as_binary("y_true", y_true)
    if fov is None:
        return truth.ravel(), y_pred.ravel()
    fov = np.asarray(fov)
    if fov.shape != y_true.shape:
        raise ValueError(
            f"fov must have the shape of y_true {y_true.shape}, got {fov.shape}"
        )
    inside = _as_binary("fov", fov)
    return truth[inside], y_pred[inside]


# ---------------------------------------------------------------------------
# Score levels: every distinct probability with its vessel and background counts


@dataclass(frozen=True)
class _Levels:
    """Distinct scores (ascending) with how many vessel/background pixels hold each.

    Everything `score` reports (the confusion at any threshold, both areas, both
    curves) follows from these counts, and the counts of several cases merge into
    the counts of their pooled pixels without keeping the pixels.
    """

    values: NDArray[np.float64]
    pos: NDArray[np.int64]
    neg: NDArray[np.int64]

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    def confusion(self, threshold: float) -> dict[str, int]:
        called = self.values >= threshold
        tp = int(self.pos[called].sum())
        fp = int(self.neg[called].sum())
        return {"tp": tp, "fp": fp, "tn": self.n_neg - fp, "fn": self.n_pos - tp}

    def descending(self) -> tuple[NDArray, NDArray, NDArray]:
        """Thresholds from the highest score down, with cumulative TP and FP."""
        tp = np.cumsum(self.pos[::-1])
        fp = np.cumsum(self.neg[::-1])
        return self.values[::-1], tp, fp


def _levels(truth: NDArray[np.bool_], y_pred: NDArray) -> _Levels:
    """The `_Levels` of flat ``truth`` and flat prediction ``y_pred`` (any dtype)."""
    if y_pred.dtype == np.uint8 or y_pred.dtype == np.bool_:
        # at most 256 levels: one bincount, no sort
        codes = y_pred.astype(np.intp)
        size = 256 if y_pred.dtype == np.uint8 else 2
        total = np.bincount(codes, minlength=size)
        pos = np.bincount(codes[truth], minlength=size)
        present = np.flatnonzero(total)
        values = np.arange(size, dtype=np.float64)
        if y_pred.dtype == np.uint8:
            values /= 255.0
        return _Levels(values[present], pos[present], (total - pos)[present])

    # two plain sorts (every pixel, then the vessel pixels) and run lengths: much
    # faster than np.unique(..., return_inverse=True) on millions of pixels
    scores = _as_float_scores(y_pred)
    values, total = _run_lengths(np.sort(scores))
    vessel_values, vessel_counts = _run_lengths(np.sort(scores[truth]))
    pos = np.zeros(len(values), dtype=np.int64)
    pos[np.searchsorted(values, vessel_values)] = vessel_counts
    return _Levels(values.astype(np.float64), pos, total - pos)


def _as_float_scores(y_pred: NDArray) -> NDArray[np.floating]:
    """`_as_probability`, but float32 stays float32 (it sorts twice as fast)."""
    if y_pred.dtype == np.float32:
        _check_range("y_pred", y_pred)
        return y_pred
    return _as_probability("y_pred", y_pred)


def _run_lengths(
    sorted_values: NDArray,
) -> tuple[NDArray, NDArray[np.int64]]:
    """Distinct values of a sorted array and how often each occurs."""
    if sorted_values.size == 0:
        return sorted_values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(
        np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    )
    counts = np.diff(np.append(starts, sorted_values.size)).astype(np.int64)
    return sorted_values[starts], counts


def _merge(levels: Sequence[_Levels]) -> _Levels:
    """The levels of the pooled pixels of several cases."""
    if not levels:
        empty = np.zeros(0, dtype=np.int64)
        return _Levels(np.zeros(0), empty, empty)
    if len(levels) == 1:
        return levels[0]
    values, inverse = np.unique(
        np.concatenate([lv.values for lv in levels]), return_inverse=True
    )
    # float64 weights sum counts exactly up to 2**53 pixels
    pos = np.bincount(inverse, np.concatenate([lv.pos for lv in levels]), len(values))
    neg = np.bincount(inverse, np.concatenate([lv.neg for lv in levels]), len(values))
    return _Levels(values, pos.astype(np.int64), neg.astype(np.int64))


def _auc_roc(lv: _Levels) -> float:
    """Mann-Whitney AUC: P(score_vessel > score_background) + P(tie) / 2."""
    n_pos, n_neg = lv.n_pos, lv.n_neg
    if n_pos == 0 or n_neg == 0:
        return math.nan
    pos = lv.pos.astype(np.float64)
    pos_above = n_pos - np.cumsum(pos)  # vessel pixels scoring above each level
    pairs = np.sum(lv.neg * (pos_above + 0.5 * pos))
    return float(pairs / (float(n_pos) * float(n_neg)))


def _average_precision(lv: _Levels) -> float:
    """Step-sum average precision over the distinct scores, highest first."""
    n_pos = lv.n_pos
    if n_pos == 0:
        return math.nan
    _, tp, fp = lv.descending()
    precision = tp / (tp + fp)
    recall_gain = lv.pos[::-1] / n_pos
    return float(np.sum(recall_gain * precision))


# ---------------------------------------------------------------------------
# Figures from counts


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _rates(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """Every rate figure of one confusion table; 0/0 gives NaN."""
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    mcc_den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": sens,
        "specificity": spec,
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "g_mean": math.sqrt(sens * spec),
        "mcc": _ratio(float(tp) * tn - float(fp) * fn, mcc_den),
    }


def _why_undefined(tp: int, fp: int, tn: int, fn: int) -> str:
    reasons = []
    if tp + fp + tn + fn == 0:
        return "the FOV holds no pixel"
    if tp + fn == 0:
        reasons.append("the vessel mask has no vessel pixel inside the FOV")
    if tn + fp == 0:
        reasons.append("the vessel mask has no background pixel inside the FOV")
    if tp + fp == 0:
        reasons.append("the prediction calls no pixel a vessel")
    if tn + fn == 0:
        reasons.append("the prediction calls every pixel a vessel")
    return "; ".join(reasons)


def _figures(
    lv: _Levels, threshold: float, what: str, stacklevel: int, notes=None
) -> dict:
    """Every figure of ``lv``; undefined ones warn, or join ``notes`` if given."""
    counts = lv.confusion(threshold)
    result: dict[str, Any] = dict(counts)
    result.update(_rates(**counts))
    result["auc_roc"] = _auc_roc(lv)
    result["auc_pr"] = _average_precision(lv)
    undefined = [k for k in RATE_KEYS + AREA_KEYS if math.isnan(result[k])]
    if undefined:
        text = (
            f"{what}: {', '.join(undefined)} undefined ({_why_undefined(**counts)}); "
            "set to NaN"
        )
        if notes is not None:
            notes.append(text)
        else:
            warn(text, UndefinedMetricWarning, stacklevel=stacklevel + 1)
    return result


# ---------------------------------------------------------------------------
# Public figures


def confusion(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    fov: ArrayLike | None = None,
    threshold: float = 0.5,
) -> dict[str, int]:
    """Confusion counts of a prediction against a vessel mask, inside the FOV.

    Parameters
    ----------
    y_true : (H, W) bool ndarray
        Manual vessel mask (bool or 0/1).
    y_pred : (H, W) ndarray
        Probability map (float in [0, 1] or uint8 0-255) or binary prediction (bool).
    fov : (H, W) bool ndarray, optional
        FOV mask; all pixels count when None.
    threshold : float, default=0.5
        A pixel is called a vessel when its probability is ``>= threshold``.

    Returns
    -------
    dict
        ``{"tp", "fp", "tn", "fn"}`` as ints.
    """
    threshold = _check_threshold(threshold)
    truth, pred = _inside_fov(y_true, y_pred, fov)
    called = _as_probability("y_pred", pred) >= threshold
    tp = int(np.count_nonzero(truth & called))
    fp = int(np.count_nonzero(called)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return {"tp": tp, "fp": fp, "tn": truth.size - tp - fp - fn, "fn": fn}


def score(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    fov: ArrayLike | None = None,
    threshold: float = 0.5,
    quiet: bool = False,
) -> dict[str, Any]:
    """Every figure of a prediction against a vessel mask, inside the FOV.

    Parameters
    ----------
    y_true : (H, W) bool ndarray
        Manual vessel mask (bool or 0/1).
    y_pred : (H, W) ndarray
        Probability map (float in [0, 1] or uint8 0-255) or binary prediction (bool).
    fov : (H, W) bool ndarray, optional
        FOV mask; all pixels count when None.
    threshold : float, default=0.5
        A pixel is called a vessel when its probability is ``>= threshold``.
    quiet : bool, default=False
        No `UndefinedMetricWarning` for undefined figures (they are NaN all the
        same). Threads use it instead of `warnings.catch_warnings`, which is
        process-wide: two threads leaving it in turn can leave warnings off.

    Returns
    -------
    dict
        ``tp, fp, tn, fn`` (int); ``accuracy, sensitivity, specificity, precision,
        f1, iou, balanced_accuracy, g_mean, mcc, auc_roc, auc_pr`` (float, NaN where
        undefined, with an `UndefinedMetricWarning`). F1 is the Dice coefficient,
        G-mean is ``sqrt(sensitivity * specificity)``.

    Notes
    -----
    The areas rank every FOV pixel: one sort per image (a 256-bin count for uint8
    and bool predictions). See the module docstring for the conventions.
    """
    threshold = _check_threshold(threshold)
    truth, pred = _inside_fov(y_true, y_pred, fov)
    notes = [] if quiet else None
    return _figures(_levels(truth, pred), threshold, "score", 2, notes)


def _pooled_levels(y_true, y_pred, fov) -> _Levels:
    """Levels of one image, or of the pooled pixels of a sequence of images."""
    if isinstance(y_true, np.ndarray):
        return _levels(*_inside_fov(y_true, y_pred, fov))
    if fov is None:
        fov = [None] * len(y_true)
    if not len(y_true) == len(y_pred) == len(fov):
        raise ValueError(
            "y_true, y_pred and fov must hold as many images each, got "
            f"{len(y_true)}, {len(y_pred)} and {len(fov)}"
        )
    triples = zip(y_true, y_pred, fov, strict=True)
    return _merge([_levels(*_inside_fov(t, p, f)) for t, p, f in triples])


def _downsample(x: NDArray, y: NDArray, max_points: int) -> NDArray[np.intp]:
    """Indices of at most ``max_points`` points, evenly spaced along the curve."""
    n = len(x)
    if n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    step = np.hypot(np.diff(np.nan_to_num(x)), np.diff(np.nan_to_num(y)))
    along = np.concatenate([[0.0], np.cumsum(step)])
    targets = np.linspace(0.0, along[-1], max_points - 1)
    idx = np.searchsorted(along, targets)
    return np.unique(np.concatenate([[0], idx, [n - 1]]))


def _curve_warning(name: str, lv: _Levels, stacklevel: int) -> None:
    if lv.n_pos == 0 or lv.n_neg == 0:
        which = "vessel" if lv.n_pos == 0 else "background"
        warn(
            f"{name}: the vessel mask has no {which} pixel inside the FOV; the "
            "curve's undefined axis is NaN",
            UndefinedMetricWarning,
            stacklevel=stacklevel + 1,
        )


def roc_curve(
    y_true: ArrayLike | Sequence[ArrayLike],
    y_pred: ArrayLike | Sequence[ArrayLike],
    fov: ArrayLike | Sequence[ArrayLike] | None = None,
    max_points: int = 500,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The ROC curve inside the FOV, for plotting.

    Parameters
    ----------
    y_true, y_pred, fov : (H, W) ndarray or sequence of them
        As in `score`; sequences are pooled (every FOV pixel of every image).
    max_points : int, default=500
        Most points returned; longer curves keep points evenly spaced along their
        length, always with both ends.

    Returns
    -------
    fpr, tpr, thresholds : (K,) float64 ndarrays
        From (0, 0) at threshold ``inf`` down through every kept distinct score to
        (1, 1). NaN on an undefined axis (one-class mask), with a warning.
    """
    lv = _pooled_levels(y_true, y_pred, fov)
    _curve_warning("roc_curve", lv, stacklevel=2)
    return _roc_points(lv, max_points)


def _roc_points(lv: _Levels, max_points: int):
    thresholds, tp, fp = lv.descending()
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = np.concatenate([[0.0], fp / lv.n_neg if lv.n_neg else fp * np.nan])
        tpr = np.concatenate([[0.0], tp / lv.n_pos if lv.n_pos else tp * np.nan])
    thresholds = np.concatenate([[np.inf], thresholds])
    keep = _downsample(fpr, tpr, max_points)
    return fpr[keep], tpr[keep], thresholds[keep]


def pr_curve(
    y_true: ArrayLike | Sequence[ArrayLike],
    y_pred: ArrayLike | Sequence[ArrayLike],
    fov: ArrayLike | Sequence[ArrayLike] | None = None,
    max_points: int = 500,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The precision-recall curve inside the FOV, for plotting.

    Parameters
    ----------
    y_true, y_pred, fov : (H, W) ndarray or sequence of them
        As in `score`; sequences are pooled (every FOV pixel of every image).
    max_points : int, default=500
        Most points returned, evenly spaced along the curve, both ends kept.

    Returns
    -------
    recall, precision, thresholds : (K,) float64 ndarrays
        From (recall 0, precision 1) at threshold ``inf`` down through every kept
        distinct score to recall 1. Recall is NaN when the vessel mask has no vessel
        pixel in the FOV, with a warning.
    """
    lv = _pooled_levels(y_true, y_pred, fov)
    if lv.n_pos == 0:
        _curve_warning("pr_curve", lv, stacklevel=2)
    return _pr_points(lv, max_points)


def _pr_points(lv: _Levels, max_points: int):
    thresholds, tp, fp = lv.descending()
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.concatenate([[0.0], tp / lv.n_pos if lv.n_pos else tp * np.nan])
        precision = np.concatenate([[1.0], tp / (tp + fp)])
    thresholds = np.concatenate([[np.inf], thresholds])
    keep = _downsample(recall, precision, max_points)
    return recall[keep], precision[keep], thresholds[keep]


# ---------------------------------------------------------------------------
# Many cases


@dataclass
class Report:
    """Figures of a set of cases: each case, their mean, and their pooled pixels.

    Attributes
    ----------
    cases : list of dict
        One dict per scored case: ``"id"`` and every key of `score`.
    mean : dict of str to float
        Mean over cases of each rate and area (not the counts), skipping the cases
        where a figure is NaN (a note says which); NaN when no case defines it.
    pooled : dict
        `score`'s figures over all FOV pixels of all cases together: the confusion
        counts summed, the areas ranked over the concatenated pixels.
    threshold : float
        The threshold the counts and rates used.
    notes : list of str
        Cases skipped (no vessel mask, no prediction) and figures left out of means.
    extra : dict
        Whatever a caller adds (``{"seconds_per_image": 0.8, "model": ...}``); merged
        into `to_json`.
    """

    cases: list[dict[str, Any]]
    mean: dict[str, float]
    pooled: dict[str, Any]
    threshold: float
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    _pooled_levels: _Levels | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``cases, mean, pooled, threshold, notes`` + ``extra``.

        NaN becomes None (JSON ``null``), so the result dumps with
        ``allow_nan=False``.
        """
        out = {
            "cases": [_json_safe(c) for c in self.cases],
            "mean": _json_safe(self.mean),
            "pooled": _json_safe(self.pooled),
            "threshold": float(self.threshold),
            "notes": list(self.notes),
        }
        out.update(_json_safe(self.extra))
        return out

    def roc_curve(self, max_points: int = 500):
        """The pooled ROC curve ``(fpr, tpr, thresholds)``; see `roc_curve`."""
        return _roc_points(self._levels(), max_points)

    def pr_curve(self, max_points: int = 500):
        """The pooled PR curve ``(recall, precision, thresholds)``; see `pr_curve`."""
        return _pr_points(self._levels(), max_points)

    def _levels(self) -> _Levels:
        if self._pooled_levels is None:
            raise ValueError(
                "this Report holds no pixel counts (it was not built by evaluate)"
            )
        return self._pooled_levels


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluate(
    cases: Sequence[Case],
    prob_maps: Sequence[ArrayLike] | Mapping[str, ArrayLike],
    threshold: float = 0.5,
    extra: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> Report:
    """Score probability maps against the cases' vessel masks, inside their FOVs.

    Parameters
    ----------
    cases : sequence of Case
        Cases without a vessel mask are skipped with a note.
    prob_maps : sequence of (H, W) ndarray, or mapping of case id to one
        One map per case, in the order of ``cases`` (or by id: cases missing from
        the mapping are skipped with a note). Float [0, 1], uint8 0-255 or bool.
    threshold : float, default=0.5
    extra : mapping, optional
        Stored in `Report.extra` (e.g. ``{"seconds_per_image": 0.8}``).
    quiet : bool, default=False
        Undefined pooled figures become a note too, without the warning (see
        `score`).

    Returns
    -------
    Report

    Notes
    -----
    Per-case undefined figures do not warn one by one; they become notes, and one
    `UndefinedMetricWarning` is raised if the pooled figures have any.
    """
    threshold = _check_threshold(threshold)
    if not isinstance(prob_maps, Mapping) and len(prob_maps) != len(cases):
        raise ValueError(
            f"prob_maps must hold one map per case: {len(cases)} cases, got "
            f"{len(prob_maps)} maps"
        )

    rows, levels, notes = [], [], []
    for i, case in enumerate(cases):
        if case.vessel_mask is None:
            notes.append(f"case {case.id}: no vessel mask, skipped")
            continue
        if isinstance(prob_maps, Mapping):
            if case.id not in prob_maps:
                notes.append(f"case {case.id}: no probability map, skipped")
                continue
            prob = np.asarray(prob_maps[case.id])
        else:
            prob = np.asarray(prob_maps[i])
        if prob.shape != case.vessel_mask.shape:
            raise ValueError(
                f"case {case.id}: the probability map is {prob.shape}, the vessel "
                f"mask {case.vessel_mask.shape}; they must be the same size"
            )
        lv = _levels(*_inside_fov(case.vessel_mask, prob, case.fov_mask))
        figures = _figures(lv, threshold, f"case {case.id}", 1, notes)
        rows.append({"id": case.id, **figures})
        levels.append(lv)

    mean = {}
    for key in RATE_KEYS + AREA_KEYS:
        values = [row[key] for row in rows if not math.isnan(row[key])]
        mean[key] = float(np.mean(values)) if values else math.nan
        left_out = [row["id"] for row in rows if math.isnan(row[key])]
        if left_out and rows:
            notes.append(
                f"mean {key} over {len(values)} of {len(rows)} cases (undefined in "
                f"{', '.join(left_out)})"
            )

    pooled_lv = _merge(levels)
    if rows:
        pooled = _figures(
            pooled_lv, threshold, "pooled figures", 2, notes if quiet else None
        )
    else:
        notes.append("no case could be scored")
        pooled = {
            **dict.fromkeys(COUNT_KEYS, 0),
            **dict.fromkeys(RATE_KEYS + AREA_KEYS, math.nan),
        }
    return Report(rows, mean, pooled, threshold, notes, dict(extra or {}), pooled_lv)


def best_threshold(
    y_true_list: Sequence[ArrayLike],
    y_prob_list: Sequence[ArrayLike],
    fov_list: Sequence[ArrayLike | None] | None = None,
    metric: str = "f1",
    quiet: bool = False,
) -> float:
    """The threshold that maximises a pooled figure over several probability maps.

    Parameters
    ----------
    y_true_list : sequence of (H, W) bool ndarray
        Vessel masks.
    y_prob_list : sequence of (H, W) ndarray
        Probability maps (float [0, 1], uint8 0-255 or bool), one per mask.
    fov_list : sequence of (H, W) bool ndarray or None, optional
        FOV masks; None (or a None entry) counts every pixel.
    metric : {"f1", "iou", "accuracy", "balanced_accuracy", "g_mean", "mcc"}
        Figure to maximise, over all FOV pixels of all maps pooled.
    quiet : bool, default=False
        No warning when the masks hold one class only (see `score`).

    Returns
    -------
    float
        One of the 1001 levels 0, 0.001, ..., 1. When several levels tie for the
        best figure, the middle of the longest run of them (for separable maps:
        halfway between the classes).

    Notes
    -----
    Each map is counted into 1001 bins (``p >= level``, exact for those levels), so
    the cost is one pass per map, with no sort. A threshold finer than 0.001 is not
    searched. With no vessel pixel or no background pixel at all, every threshold
    is as good and 0.5 is returned with an `UndefinedMetricWarning`.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"metric must be one of {THRESHOLD_METRICS}, got {metric!r}")
    if fov_list is None:
        fov_list = [None] * len(y_true_list)
    if not len(y_true_list) == len(y_prob_list) == len(fov_list):
        raise ValueError(
            "y_true_list, y_prob_list and fov_list must be as long as each other, got "
            f"{len(y_true_list)}, {len(y_prob_list)} and {len(fov_list)}"
        )

    # pos[i] / neg[i]: vessel / background pixels whose probability has level i as
    # the highest level not above it
    n = len(THRESHOLD_LEVELS)
    pos = np.zeros(n, dtype=np.int64)
    neg = np.zeros(n, dtype=np.int64)
    for y_true, y_prob, fov in zip(y_true_list, y_prob_list, fov_list, strict=True):
        truth, pred = _inside_fov(y_true, y_prob, fov)
        bins = np.searchsorted(
            THRESHOLD_LEVELS, _as_probability("y_prob", pred), "right"
        )
        bins -= 1
        total = np.bincount(bins, minlength=n)
        vessel = np.bincount(bins[truth], minlength=n)
        pos += vessel
        neg += total - vessel
    if pos.sum() == 0 or neg.sum() == 0:
        if not quiet:
            warn(
                "best_threshold: the vessel masks hold only one class inside the "
                "FOVs; returning 0.5",
                UndefinedMetricWarning,
                stacklevel=2,
            )
        return 0.5

    # counts at each threshold: called vessel = level index >= i
    tp = np.cumsum(pos[::-1])[::-1].astype(np.float64)
    fp = np.cumsum(neg[::-1])[::-1].astype(np.float64)
    fn = pos.sum() - tp
    tn = neg.sum() - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        values = {
            "f1": lambda: 2 * tp / (2 * tp + fp + fn),
            "iou": lambda: tp / (tp + fp + fn),
            "accuracy": lambda: (tp + tn) / (tp + tn + fp + fn),
            "balanced_accuracy": lambda: (sens + spec) / 2,
            "g_mean": lambda: np.sqrt(sens * spec),
            "mcc": lambda: (
                (tp * tn - fp * fn)
                / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            ),
        }[metric]()
    values = np.where(np.isnan(values), -np.inf, values)
    return float(THRESHOLD_LEVELS[_middle_of_best(values)])


def _middle_of_best(values: NDArray[np.float64]) -> int:
    """Index in the middle of the longest run of maximal values."""
    best = np.flatnonzero(values == values.max())
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    longest = max(runs, key=len)
    return int(longest[(len(longest) - 1) // 2])
