"""Classic filters baseline (model kind ``"classic"``): ridge filters, a logistic fit.

No features are learnt: the preprocessed green channel (`vessel_core.preprocess`)
goes through fixed vessel detectors, and a logistic regression on a few thousand
training pixels weighs them into a vessel probability:

* multi-scale ridge strength, the scale-normalised largest Hessian eigenvalue
  across dark lines (the quantity behind Frangi's and Sato's vesselness) at
  ``sigmas``, or scikit-image's ``frangi``/``sato``/``meijering`` filter when
  ``ridge`` names one;
* optionally the modulus of Morlet wavelets maximised over orientations
  (a matched filter elongated along the vessel; Soares et al. 2006);
* the preprocessed green value itself.

Each response is standardised over the image's FOV. The probability map is the
logistic output, smoothed by a small Gaussian inside the FOV, and the threshold
is the one of best F1 on the training cases.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vessel_core import features as ft
from vessel_core import preprocess as pp
from vessel_core.cases import (
    Case,
    fingerprint_cases,
    fit_cases,
    image_fingerprints,
    one_class_error,
)
from vessel_core.knn import FitStopped, _image_and_fov, _subsample, smooth_inside
from vessel_core.progress import Progress, emit, should_stop

logger = logging.getLogger(__name__)

ARRAYS_FILE = "arrays.npz"
RIDGES = ("hessian", "frangi", "sato", "meijering")

_DEFAULTS: dict[str, Any] = {
    "ridge": "hessian",
    "sigmas": "1,2,4",
    "morlet": True,
    "squares": True,
    "smooth_sigma": 1.0,
    "pixels_per_case": 5000,
    "seed": 0,
}


class ClassicFilters:
    """Multi-scale ridge filters turned into a vessel probability map.

    Parameters
    ----------
    ridge : {"hessian", "frangi", "sato", "meijering"}, default="hessian"
        ``"hessian"``: one ridge-strength map per sigma (fast, OpenCV).
        Otherwise scikit-image's filter of that name (``black_ridges=True``)
        over all ``sigmas`` at once (slower: about 1 s per DRIVE image).
    sigmas : str or sequence of float, default="1,2,4"
        Scales in pixels at DRIVE's resolution (scaled with the FOV diameter).
    morlet : bool, default=True
        Add the Morlet wavelet responses at scales 3, 4 and 5.
    squares : bool, default=True
        Give the logistic fit the squares of the responses too (a quadratic
        decision boundary: a response can matter more at its extremes).
    smooth_sigma : float, default=1.0
        Gaussian smoothing of the probability map inside the FOV (0: none).
    pixels_per_case : int, default=5000
        Training pixels per case for the logistic fit, drawn uniformly in the FOV.
    seed : int, default=0

    Attributes
    ----------
    kind : str
        ``"classic"``.
    threshold : float
        Best-F1 threshold on the training cases.
    meta : dict
        ``settings``, ``train_cases``, ``train_fingerprint``, ``feature_names``,
        ``coefficients``, ``scores`` (training cases), ``fit_seconds``.

    References
    ----------
    .. [1] A. F. Frangi, W. J. Niessen, K. L. Vincken and M. A. Viergever,
       "Multiscale vessel enhancement filtering", MICCAI 1998, LNCS 1496,
       pp. 130-137. :doi:`10.1007/BFb0056195`
    .. [2] Y. Sato et al., "Three-dimensional multi-scale line filter for
       segmentation and visualization of curvilinear structures in medical
       images", Medical Image Analysis 2(2), 143-168, 1998.
       :doi:`10.1016/S1361-8415(98)80009-1`
    """

    kind = "classic"
    SETTING_CHOICES = {
        "ridge": list(RIDGES),
        "morlet": [True, False],
        "squares": [True, False],
    }

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(_DEFAULTS))
        if unknown:
            raise ValueError(
                f"ClassicFilters has no setting(s) {unknown}; its settings are "
                f"{sorted(_DEFAULTS)}"
            )
        self.settings = _resolve({**_DEFAULTS, **settings})
        self.threshold = 0.5
        self.meta: dict[str, Any] = {"settings": dict(self.settings)}
        self.coef_: NDArray[np.float64] | None = None
        self.intercept_ = 0.0

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """Every setting with its default (flat, JSON-ready)."""
        return dict(_DEFAULTS)

    def feature_names(self) -> list[str]:
        """Names of the responses the logistic fit weighs, in order."""
        sigmas = _sigmas(self.settings["sigmas"])
        if self.settings["ridge"] == "hessian":
            names = [f"hessian_ridge(s={s:g})" for s in sigmas]
        else:
            names = [
                f"{self.settings['ridge']}(s={','.join(f'{s:g}' for s in sigmas)})"
            ]
        if self.settings["morlet"]:
            names += [f"morlet(a={a:g})" for a in ft._MORLET_SCALES]
        return names + ["green"]

    def responses(self, image: NDArray, fov: NDArray[np.bool_]) -> NDArray[np.float32]:
        """The standardised filter responses ``(H, W, F)`` of one image."""
        green = pp.preprocess(image, fov)
        scale = pp.filter_scale(fov)
        sigmas = [max(0.5, s * scale) for s in _sigmas(self.settings["sigmas"])]
        bright = -green
        planes = []
        if self.settings["ridge"] == "hessian":
            planes += [ft.hessian_ridge(bright, s) for s in sigmas]
        else:
            from skimage import filters

            ridge = getattr(filters, self.settings["ridge"])
            planes.append(
                ridge(green, sigmas=sigmas, black_ridges=True, mode="reflect")
            )
        if self.settings["morlet"]:
            downsample = max(1, int(round(ft._MORLET_DOWNSAMPLE * scale)))
            scales = [max(1.0 * downsample, a * scale) for a in ft._MORLET_SCALES]
            planes += ft.morlet_max(bright, scales, downsample=downsample)
        planes.append(bright)
        out = np.empty(green.shape + (len(planes),), dtype=np.float32)
        for j, plane in enumerate(planes):
            out[..., j] = pp.standardise(np.asarray(plane, dtype=np.float32), fov)
        return out

    # -- fitting ----------------------------------------------------------------------

    def fit(
        self,
        cases: Sequence[Case],
        selection=None,
        on_progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> ClassicFilters:
        """Fit the logistic weights and the threshold on the cases with a mask.

        Parameters
        ----------
        cases : sequence of Case
        selection : ignored
            The pixels are drawn uniformly in each FOV, so the logistic model
            sees the true class ratio (accepted for the common model face).
        on_progress : callable, optional
            ``"features"`` per case, then ``"done"``.
        stop : threading.Event, optional
            Checked between cases; a set flag raises `vessel_core.knn.FitStopped`.

        Returns
        -------
        ClassicFilters
            ``self``.
        """
        from sklearn.linear_model import LogisticRegression

        from vessel_core import metrics

        started = time.monotonic()
        cases = fit_cases(cases)  # with a mask of both classes; warns of the rest
        rng = np.random.default_rng(self.settings["seed"])
        X, y, maps = [], [], []
        for i, case in enumerate(cases):
            if should_stop(stop):
                raise FitStopped("stopped while computing filter responses; no model")
            planes = self.responses(case.image, case.fov_mask)
            inside = np.argwhere(case.fov_mask)
            take = inside[
                _subsample(len(inside), self.settings["pixels_per_case"], rng)
            ]
            X.append(planes[take[:, 0], take[:, 1]])
            y.append(case.vessel_mask[take[:, 0], take[:, 1]])
            maps.append(planes)
            emit(
                on_progress,
                Progress(
                    "features", i + 1, len(cases), {}, f"filters of case {case.id}"
                ),
            )
        X, y = np.concatenate(X), np.concatenate(y)
        if y.all() or not y.any():
            raise one_class_error(cases, bool(y.all()))

        fit = LogisticRegression(max_iter=3000).fit(self._terms(X), y)
        self.coef_ = fit.coef_[0].astype(np.float64)
        self.intercept_ = float(fit.intercept_[0])

        probs = [
            self._probability(planes, case.fov_mask)
            for planes, case in zip(maps, cases, strict=True)
        ]
        self.threshold = metrics.best_threshold(
            [c.vessel_mask for c in cases], probs, [c.fov_mask for c in cases]
        )
        report = metrics.evaluate(cases, probs, self.threshold)
        self.meta.update(
            {
                "settings": dict(self.settings),
                "train_cases": [c.id for c in cases],
                "train_fingerprint": fingerprint_cases(cases),
                "train_images": image_fingerprints(cases),
                "feature_names": self.feature_names(),
                "coefficients": self.coef_.tolist(),
                "intercept": self.intercept_,
                "scores": {"mean": report.mean, "pooled": report.pooled},
                "training_fov_diameter": float(
                    np.median([pp.fov_diameter(c.fov_mask) for c in cases])
                ),
                "fit_seconds": time.monotonic() - started,
            }
        )
        emit(
            on_progress,
            Progress(
                "done",
                1,
                1,
                {
                    "threshold": self.threshold,
                    "train_auc_roc": report.pooled["auc_roc"],
                },
                f"classic filters fitted on {len(cases)} cases, threshold "
                f"{self.threshold:.3f}",
            ),
        )
        return self

    # -- predicting -------------------------------------------------------------------

    def _terms(self, X: NDArray) -> NDArray:
        """The logistic fit's inputs: the responses, and their squares if asked."""
        return np.concatenate([X, X * X], axis=-1) if self.settings["squares"] else X

    def _probability(
        self, planes: NDArray, fov: NDArray[np.bool_]
    ) -> NDArray[np.float32]:
        n = planes.shape[-1]
        coef = self.coef_.astype(np.float32)
        score = planes @ coef[:n] + np.float32(self.intercept_)
        if self.settings["squares"]:
            score += (planes * planes) @ coef[n:]
        # the logistic function, without overflow for very negative scores
        prob = (0.5 * (1.0 + np.tanh(0.5 * score))).astype(np.float32)
        if self.settings["smooth_sigma"] > 0:
            prob = smooth_inside(prob, fov, self.settings["smooth_sigma"])
        prob[~fov] = 0.0
        return prob

    def predict_proba(self, case_or_image: Case | NDArray) -> NDArray[np.float32]:
        """The vessel probability map of a case or an RGB image.

        Parameters
        ----------
        case_or_image : Case or (H, W, 3) uint8 ndarray
            An image without a case gets its FOV from `vessel_core.io.estimate_fov`.

        Returns
        -------
        (H, W) float32 ndarray
            Probabilities in [0, 1]; 0 outside the FOV.
        """
        if self.coef_ is None:
            raise ValueError(
                "this ClassicFilters is not fitted: call fit or load it first"
            )
        image, fov = _image_and_fov(case_or_image)
        return self._probability(self.responses(image, fov), fov)

    # -- saving -----------------------------------------------------------------------

    def save_files(self, folder: Path) -> None:
        """Write ``arrays.npz``: the logistic coefficients and intercept."""
        if self.coef_ is None:
            raise ValueError(
                "this ClassicFilters is not fitted: there is nothing to save"
            )
        np.savez(
            Path(folder) / ARRAYS_FILE,
            coef=self.coef_,
            intercept=np.asarray(self.intercept_),
        )

    @classmethod
    def load_files(cls, folder: Path, meta: dict[str, Any]) -> ClassicFilters:
        """Rebuild from ``arrays.npz`` and ``meta`` (loaded without pickle)."""
        path = Path(folder) / ARRAYS_FILE
        if not path.is_file():
            raise ValueError(f"{folder}: no {ARRAYS_FILE} in this classic model folder")
        settings = {k: v for k, v in meta.get("settings", {}).items() if k in _DEFAULTS}
        model = cls(**settings)
        with np.load(path, allow_pickle=False) as arrays:
            model.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
            model.intercept_ = float(arrays["intercept"])
        expected = len(model.feature_names()) * (2 if model.settings["squares"] else 1)
        if len(model.coef_) != expected:
            raise ValueError(
                f"{path}: {len(model.coef_)} coefficients stored, the settings need "
                f"{expected}"
            )
        model.threshold = float(meta.get("threshold", 0.5))
        model.meta = {
            k: v for k, v in meta.items() if k not in ("kind", "name", "threshold")
        }
        return model


def _sigmas(value) -> list[float]:
    """Scales from ``"1,2,4"`` or a sequence of numbers."""
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").split(",") if p.strip()]
    else:
        parts = list(value)
    try:
        sigmas = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise ValueError(
            f"sigmas must be numbers like '1,2,4', got {value!r}"
        ) from None
    if not sigmas or min(sigmas) <= 0:
        raise ValueError(f"sigmas must be one or more numbers > 0, got {value!r}")
    return sigmas


def _resolve(settings: dict[str, Any]) -> dict[str, Any]:
    s = dict(settings)
    if s["ridge"] not in RIDGES:
        raise ValueError(f"ridge must be one of {RIDGES}, got {s['ridge']!r}")
    _sigmas(s["sigmas"])
    if not isinstance(s["sigmas"], str):
        s["sigmas"] = ",".join(f"{float(v):g}" for v in s["sigmas"])
    s["morlet"] = bool(s["morlet"])
    s["squares"] = bool(s["squares"])
    s["smooth_sigma"] = float(s["smooth_sigma"])
    if s["smooth_sigma"] < 0:
        raise ValueError(f"smooth_sigma must be >= 0, got {s['smooth_sigma']!r}")
    s["pixels_per_case"] = int(s["pixels_per_case"])
    if s["pixels_per_case"] < 10:
        raise ValueError(f"pixels_per_case must be >= 10, got {s['pixels_per_case']!r}")
    s["seed"] = int(s["seed"])
    return s
