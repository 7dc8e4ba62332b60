"""K-nearest-neighbour pixel classification (the model kind ``"knn"``).

Two layers:

`KNNClassifier`
    a scikit-learn estimator for feature vectors, with a fast *screened* search
    (below) or scikit-learn's exact brute-force search; `choose_k` picks its
    ``n_neighbors`` by cross-validation with folds grouped by case.
`KNNModel`
    the model kind: features per pixel (`vessel_core.features`), the training
    pixels from the undersampling (`vessel_core.sampling`), k chosen by CV, a
    threshold fitted on the training cases, chunked prediction of whole images.
    By default in two stages (auto-context): a second k-NN reads the same
    features plus features of the first stage's probability map around the
    pixel (`vessel_core.features.context_planes`), which tell a vessel that
    continues from an isolated dark spot or the optic disc rim.

The screened search
-------------------
An exact k-NN search costs a distance to every training sample for every pixel:
about 10 s for a DRIVE image (225,000 FOV pixels, 10,000 samples of 24
features) on two cores, and no exact index helps, since the features are too
many and too noisy for a KD-tree to prune (measured: slower than brute force
from 9 features up). But the k-NN vote of most pixels is never in doubt: two
thirds of a fundus is background whose neighbours are all background. The
screened search therefore

1. predicts each pixel's k-NN vote with a small surrogate (a one-hidden-layer
   perceptron fitted at ``fit`` time to the exact votes of calibration pixels);
2. runs the exact search (scikit-learn's brute force, the same neighbours as
   `sklearn.neighbors.KNeighborsClassifier`) only for the pixels whose predicted
   vote lies in a band ``(screen_low_, screen_high_)`` around 0.5;
3. gives every other pixel the surrogate's vote (clipped to [0, 1]).

The band is calibrated on held-out calibration pixels so that the estimated
share of pixels whose label (vote above or below 0.5) differs from the exact
search is at most ``screen_tolerance``. What it trades: outside the band the
*probabilities* are the surrogate's estimate of the vote, not the vote itself
(the labels agree to within the tolerance); inside it everything is exact.
About 95% of a DRIVE image is screened out, which gives the speed-up.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted

from vessel_core import features as ft
from vessel_core import preprocess as pp
from vessel_core.cases import (
    Case,
    fingerprint_cases,
    fit_cases,
    image_fingerprints,
    one_class_error,
)
from vessel_core.progress import Progress, emit, should_stop, silence, warn

logger = logging.getLogger(__name__)

ARRAYS_FILE = "arrays.npz"
_CONTEXT_PREFIX = "context_"
SEARCHES = ("screened", "exact")
REBUILDS = ("pixel", "block")


class FitStopped(RuntimeError):
    """A fit ended by its stop flag before a usable model existed."""


# --------------------------------------------------------------------------------
# The estimator


class KNNClassifier(ClassifierMixin, BaseEstimator):
    """k-nearest-neighbour classifier with a screened fast search.

    Parameters
    ----------
    n_neighbors : int, default=15
        Neighbours that vote (uniform weights, Euclidean distance).
    search : {"screened", "exact"}, default="screened"
        ``"exact"``: scikit-learn's brute-force search for every row.
        ``"screened"``: a surrogate screens out rows whose vote is not in doubt;
        the rest are searched exactly (see the module docstring). Two classes
        only; with more, the search is exact and a warning says so.
    screen_tolerance : float, default=0.002
        Largest estimated share of rows whose screened label may differ from the
        exact one.
    screen_hidden : int, default=32
        Hidden units of the surrogate perceptron.
    max_screen_samples : int, default=40000
        Calibration rows used (drawn at random beyond that).
    chunk_size : int, default=262144
        Rows predicted at once; bounds the memory of `predict_proba`.
    random_state : int, default=0

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    screen_low_, screen_high_ : float
        The band of surrogate votes that goes to the exact search.
    screen_stats_ : dict
        Calibration figures: ``coverage`` (share screened out), ``label_error``
        (estimated share of labels that differ from the exact search),
        ``n_calibration``.
    """

    def __init__(
        self,
        n_neighbors: int = 15,
        search: str = "screened",
        screen_tolerance: float = 0.002,
        screen_hidden: int = 32,
        max_screen_samples: int = 40000,
        chunk_size: int = 262144,
        random_state: int = 0,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.search = search
        self.screen_tolerance = screen_tolerance
        self.screen_hidden = screen_hidden
        self.max_screen_samples = max_screen_samples
        self.chunk_size = chunk_size
        self.random_state = random_state

    # -- fitting ----------------------------------------------------------------------

    def fit(
        self,
        X: NDArray,
        y: NDArray,
        groups: NDArray | None = None,
        X_screen: NDArray | None = None,
        groups_screen: NDArray | None = None,
    ) -> KNNClassifier:
        """Store the training samples and, for the screened search, fit the screen.

        Parameters
        ----------
        X : (n_samples, n_features) array
        y : (n_samples,) array
        groups : (n_samples,) array, optional
            Group (case) of each sample. Calibration votes then leave out the
            calibration row's own group, as a new image would see them, and
            `predict_proba` can leave one group out (``exclude_group``).
        X_screen : (m, n_features) array, optional
            Rows drawn like the rows that will be predicted (for images: pixels
            drawn uniformly from the FOV), to calibrate the screen. Default: up
            to ``max_screen_samples`` rows of ``X``.
        groups_screen : (m,) array, optional
            Group of each ``X_screen`` row (needed with ``groups``).

        Returns
        -------
        KNNClassifier
            ``self``.
        """
        X = _check_X(X, "X")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(
                f"y must be 1-D with one label per row of X ({len(X)}), got shape "
                f"{y.shape}"
            )
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        k = int(self.n_neighbors)
        if k < 1 or k > len(X):
            raise ValueError(
                f"n_neighbors must be in [1, n_samples={len(X)}], "
                f"got {self.n_neighbors!r}"
            )
        self.classes_, self._y = np.unique(y, return_inverse=True)
        self._X = X
        self.n_features_in_ = X.shape[1]
        self._groups = None if groups is None else np.asarray(groups)
        if self._groups is not None and len(self._groups) != len(X):
            raise ValueError(
                f"groups must have one entry per row of X ({len(X)}), "
                f"got {len(self._groups)}"
            )
        self._index = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X)
        self._group_index: dict[Any, tuple[NearestNeighbors, NDArray]] = {}

        self._screened = False
        self.screen_low_, self.screen_high_ = 0.5, 0.5
        self.screen_stats_ = {"coverage": 0.0, "label_error": 0.0, "n_calibration": 0}
        if self.search == "screened":
            if len(self.classes_) != 2:
                warn(
                    f"KNNClassifier: the screened search needs two classes, got "
                    f"{len(self.classes_)}; searching exactly",
                    stacklevel=2,
                )
            else:
                self._fit_screen(X_screen, groups_screen)
        return self

    def _fit_screen(self, X_screen, groups_screen) -> None:
        """Fit the surrogate to exact votes and calibrate the band to the tolerance."""
        from sklearn.neural_network import MLPRegressor

        rng = np.random.default_rng(self.random_state)
        if X_screen is None:
            take = rng.permutation(len(self._X))[: self.max_screen_samples]
            X_screen = self._X[take]
            groups_screen = None if self._groups is None else self._groups[take]
            leave_self_out = self._groups is None
        else:
            X_screen = _check_X(X_screen, "X_screen", self.n_features_in_)
            leave_self_out = False
            if len(X_screen) > self.max_screen_samples:
                take = rng.permutation(len(X_screen))[: self.max_screen_samples]
                X_screen = X_screen[take]
                if groups_screen is not None:
                    groups_screen = np.asarray(groups_screen)[take]
        if self._groups is not None and groups_screen is None:
            raise ValueError(
                "groups_screen is needed when X_screen and groups are given"
            )
        if len(X_screen) < 100:
            warn(
                f"KNNClassifier: {len(X_screen)} calibration rows are too few to "
                "screen; searching exactly",
                stacklevel=3,
            )
            return

        votes = self._calibration_votes(X_screen, groups_screen, leave_self_out)
        order = rng.permutation(len(X_screen))
        n_fit = (2 * len(order)) // 3
        fit_rows, check_rows = order[:n_fit], order[n_fit:]

        net = MLPRegressor(
            hidden_layer_sizes=(int(self.screen_hidden),),
            early_stopping=True,
            max_iter=200,
            random_state=self.random_state,
        )
        from sklearn.exceptions import ConvergenceWarning

        silence(ConvergenceWarning, module=r"sklearn\.")  # early stopping suffices
        net.fit(X_screen[fit_rows], votes[fit_rows])
        self._w1 = net.coefs_[0].astype(np.float32)
        self._b1 = net.intercepts_[0].astype(np.float32)
        self._w2 = net.coefs_[1][:, 0].astype(np.float32)
        self._b2 = np.float32(net.intercepts_[1][0])

        guess = self._surrogate(X_screen[check_rows])
        truth = votes[check_rows] > 0.5
        low, high, error = _screen_band(guess, truth, float(self.screen_tolerance))
        self.screen_low_, self.screen_high_ = low, high
        outside = (guess <= low) | (guess >= high)
        self.screen_stats_ = {
            "coverage": float(outside.mean()),
            "label_error": error,
            "n_calibration": int(len(X_screen)),
        }
        self._screened = True

    def _calibration_votes(self, X_screen, groups_screen, leave_self_out) -> NDArray:
        """Exact class-1 votes of calibration rows (own group or own row left out)."""
        k = int(self.n_neighbors)
        if leave_self_out:
            index = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(self._X)
            neighbours = index.kneighbors(X_screen, return_distance=False)[:, 1:]
            return self._y[neighbours].mean(axis=1)
        if self._groups is None:
            return self._exact_votes(X_screen)[:, 1]
        votes = np.empty(len(X_screen))
        groups_screen = np.asarray(groups_screen)
        for group in np.unique(groups_screen):
            rows = groups_screen == group
            votes[rows] = self._exact_votes(X_screen[rows], exclude_group=group)[:, 1]
        return votes

    # -- searching --------------------------------------------------------------------

    def _index_without(self, group) -> tuple[NearestNeighbors, NDArray]:
        if group not in self._group_index:
            keep = self._groups != group
            if np.count_nonzero(keep) < self.n_neighbors:
                raise ValueError(
                    f"leaving out group {group!r} leaves fewer than n_neighbors samples"
                )
            index = NearestNeighbors(
                n_neighbors=int(self.n_neighbors), algorithm="brute"
            )
            self._group_index[group] = (index.fit(self._X[keep]), self._y[keep])
        return self._group_index[group]

    def _exact_votes(self, X: NDArray, exclude_group=None) -> NDArray[np.float64]:
        """Share of the k nearest samples in each class, ``(n, n_classes)``."""
        if len(X) == 0:
            return np.zeros((0, len(self.classes_)))
        if exclude_group is None:
            index, labels = self._index, self._y
        else:
            if self._groups is None:
                raise ValueError(
                    "exclude_group needs the classifier fitted with groups"
                )
            index, labels = self._index_without(exclude_group)
        neighbours = index.kneighbors(X, return_distance=False)
        n_classes = len(self.classes_)
        votes = np.zeros((len(X), n_classes))
        for c in range(n_classes):
            votes[:, c] = np.count_nonzero(labels[neighbours] == c, axis=1)
        return votes / neighbours.shape[1]

    def _surrogate(self, X: NDArray) -> NDArray[np.float32]:
        """The perceptron's vote estimate, in blocks of rows that stay in cache."""
        from threadpoolctl import threadpool_limits

        out = np.empty(len(X), dtype=np.float32)
        # one BLAS thread: for these skinny products threads cost more than they give
        with threadpool_limits(limits=1, user_api="blas"):
            for start in range(0, len(X), 16384):
                hidden = X[start : start + 16384] @ self._w1
                hidden += self._b1
                np.maximum(hidden, 0.0, out=hidden)
                out[start : start + 16384] = hidden @ self._w2 + self._b2
        return out

    def predict_proba(self, X: NDArray, exclude_group=None) -> NDArray[np.float64]:
        """Class shares among the k nearest training samples.

        Parameters
        ----------
        X : (n, n_features) array
        exclude_group : optional
            Leave this group's training samples out (scores a training image as
            if it were new; needs ``groups`` at fit time).

        Returns
        -------
        (n, n_classes) ndarray
            For the screened search, rows screened out carry the surrogate's
            estimate of the vote (see the module docstring).
        """
        check_is_fitted(self, "classes_")
        X = _check_X(X, "X", self.n_features_in_)
        step = max(1, int(self.chunk_size))
        if not self._screened:
            out = np.empty((len(X), len(self.classes_)))
            for start in range(0, len(X), step):
                chunk = X[start : start + step]
                out[start : start + step] = self._exact_votes(chunk, exclude_group)
            return out

        # the surrogate for every row, then the exact search for the doubtful rows
        vote = np.empty(len(X))
        for start in range(0, len(X), step):
            vote[start : start + step] = self._surrogate(X[start : start + step])
        np.clip(vote, 0.0, 1.0, out=vote)
        doubtful = np.flatnonzero(
            (vote > self.screen_low_) & (vote < self.screen_high_)
        )
        for start in range(0, len(doubtful), step):
            rows = doubtful[start : start + step]
            vote[rows] = self._exact_votes(X[rows], exclude_group)[:, 1]
        return np.stack([1.0 - vote, vote], axis=1)

    def predict(self, X: NDArray, exclude_group=None) -> NDArray:
        """The majority class of the k nearest samples (ties: the first class)."""
        proba = self.predict_proba(X, exclude_group)
        return self.classes_[np.argmax(proba, axis=1)]

    def _screen_mask(self, X: NDArray) -> NDArray[np.bool_]:
        """True for the rows of ``X`` the screen answers without an exact search."""
        check_is_fitted(self, "classes_")
        X = _check_X(X, "X", self.n_features_in_)
        if not self._screened:
            return np.zeros(len(X), dtype=bool)
        guess = np.clip(self._surrogate(X), 0, 1)
        return (guess <= self.screen_low_) | (guess >= self.screen_high_)

    def screened_share(self, X: NDArray) -> float:
        """Share of the rows of ``X`` the screen answers without an exact search."""
        return float(np.mean(self._screen_mask(X))) if len(X) else 0.0

    # -- saving -----------------------------------------------------------------------

    def to_arrays(self) -> dict[str, NDArray]:
        """Everything a fitted classifier needs, as plain arrays (no pickle)."""
        check_is_fitted(self, "classes_")
        arrays = {
            "X": self._X,
            "y": self._y.astype(np.int64),
            "classes": np.asarray(self.classes_),
            "n_neighbors": np.asarray(int(self.n_neighbors)),
            "screen_band": np.asarray([self.screen_low_, self.screen_high_]),
            "screened": np.asarray(self._screened),
        }
        if self._groups is not None:
            arrays["groups"] = np.asarray(self._groups).astype(str)
        if self._screened:
            arrays.update(
                w1=self._w1, b1=self._b1, w2=self._w2, b2=np.asarray(self._b2)
            )
        return arrays

    @classmethod
    def from_arrays(cls, arrays, **params) -> KNNClassifier:
        """Rebuild a classifier written by `to_arrays` (no refitting of the screen)."""
        model = cls(n_neighbors=int(arrays["n_neighbors"]), **params)
        model._X = np.ascontiguousarray(arrays["X"], dtype=np.float32)
        model._y = np.asarray(arrays["y"], dtype=np.int64)
        model.classes_ = np.asarray(arrays["classes"])
        model.n_features_in_ = model._X.shape[1]
        model._groups = np.asarray(arrays["groups"]) if "groups" in arrays else None
        model._index = NearestNeighbors(
            n_neighbors=model.n_neighbors, algorithm="brute"
        ).fit(model._X)
        model._group_index = {}
        model._screened = bool(arrays["screened"])
        model.screen_low_, model.screen_high_ = (
            float(v) for v in arrays["screen_band"]
        )
        model.screen_stats_ = {}
        if model._screened:
            model._w1 = np.asarray(arrays["w1"], dtype=np.float32)
            model._b1 = np.asarray(arrays["b1"], dtype=np.float32)
            model._w2 = np.asarray(arrays["w2"], dtype=np.float32)
            model._b2 = np.float32(arrays["b2"])
        return model


def _check_X(X, name: str, n_features: int | None = None) -> NDArray[np.float32]:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (n_samples, n_features) array, got {X.shape}"
        )
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{name} has {X.shape[1]} features; the classifier was fitted on "
            f"{n_features}"
        )
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return X


def _screen_band(
    guess: NDArray, truth: NDArray[np.bool_], tolerance: float
) -> tuple[float, float, float]:
    """The widest screened-out region ``guess <= low`` / ``guess >= high``.

    Half of ``tolerance`` goes to each side: among the calibration rows, at most
    that share of all rows may be screened to the wrong label.
    """
    n = len(guess)
    budget = int(math.floor(0.5 * tolerance * n))
    order = np.argsort(guess, kind="stable")
    g, t = guess[order], truth[order]

    # low side: rows at or below low that are truly class 1 are errors
    wrong_low = np.cumsum(t)
    fits = np.flatnonzero(wrong_low <= budget)
    i_low = fits[-1] if fits.size else -1
    low = float(min(g[i_low], 0.5)) if i_low >= 0 else -math.inf
    # high side: rows at or above high that are truly class 0
    wrong_high = np.cumsum(~t[::-1])
    fits = np.flatnonzero(wrong_high <= budget)
    i_high = fits[-1] if fits.size else -1
    high = float(max(g[::-1][i_high], 0.5)) if i_high >= 0 else math.inf
    if low >= high:  # a perfect surrogate: keep a sliver of doubt at 0.5
        low, high = 0.5 - 1e-6, 0.5 + 1e-6

    errors = np.count_nonzero(t & (guess[order] <= low)) + np.count_nonzero(
        ~t & (guess[order] >= high)
    )
    return low, high, float(errors / max(n, 1))


# --------------------------------------------------------------------------------
# Choosing k


@dataclass
class KChoice:
    """The result of `choose_k`.

    Attributes
    ----------
    k : int
        The chosen k: the smallest whose mean score is within one standard error
        of the best mean (the one-standard-error rule [1]_).
    mean_scores : dict of int to float
        Mean CV score per k over the folds run.
    results : list of dict
        One ``{"k", "fold", "score"}`` per (k, fold), in the order computed.
    metric : str
    stopped : bool
        True when the stop flag ended the CV early.
    best_k : int or None
        The k with the best mean score (the smallest of those tied); None when
        no fold gave a score.
    standard_error : float
        Standard error of ``best_k``'s fold scores (0 with one fold).
    n_folds : int
        Folds used: the number asked for, at most one per case, at least 2.

    References
    ----------
    .. [1] T. Hastie, R. Tibshirani, J. Friedman, "The Elements of Statistical
       Learning", 2nd ed., Springer, 2009, section 7.10.1.
    """

    k: int
    mean_scores: dict[int, float]
    results: list[dict[str, float]] = field(default_factory=list)
    metric: str = "auc_roc"
    stopped: bool = False
    best_k: int | None = None
    standard_error: float = 0.0
    n_folds: int = 0


def grouped_folds(groups: NDArray, n_folds: int):
    """(train, held-out) index arrays of `GroupKFold`: no group on both sides."""
    groups = np.asarray(groups)
    splitter = GroupKFold(n_splits=n_folds)
    yield from splitter.split(np.zeros((len(groups), 1)), groups=groups)


def choose_k(
    X: NDArray,
    y: NDArray,
    groups: NDArray,
    ks: Iterable[int] = range(1, 16, 2),
    n_folds: int = 5,
    on_result: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> KChoice:
    """Choose ``n_neighbors`` by cross-validation with folds grouped by case.

    Parameters
    ----------
    X : (n_samples, n_features) array
    y : (n_samples,) bool array
    groups : (n_samples,) array
        Case of each sample; `sklearn.model_selection.GroupKFold` keeps all the
        pixels of one case on the same side of every split.
    ks : iterable of int, default=range(1, 16, 2)
    n_folds : int, default=5
        Made no larger than the number of cases; at least 2 cases are needed.
    on_result : callable, optional
        Called with ``Progress(step="cv", metrics={"k", "fold", "score"})`` after
        every (k, fold) result.
    stop : threading.Event, optional
        Checked before each fold; when set, the folds done so far decide.

    Returns
    -------
    KChoice

    Notes
    -----
    The score is the AUC-ROC of the k-NN vote on the held-out samples. AUC needs
    no threshold and does not depend on the class ratio, which the undersampling
    changed (the samples are far more balanced than a fundus). The held-out
    samples are the undersampled ones, though, rich in hard background near
    vessels, so the CV AUC is lower than a whole-image AUC; it serves to rank k.
    One exact search with the largest k per fold serves every k.

    The mean AUC rises with k and then levels off (on DRIVE's training cases it
    gains 0.002 from k=31 to 101, less than the folds disagree); the
    one-standard-error rule takes the smallest k on that plateau rather than
    the last, noisy maximum.
    """
    from sklearn.metrics import roc_auc_score

    X = _check_X(X, "X")
    y = np.asarray(y).astype(bool)
    groups = np.asarray(groups)
    if len(y) != len(X) or len(groups) != len(X):
        raise ValueError(
            f"X, y and groups must have the same length, got {len(X)}, {len(y)}, "
            f"{len(groups)}"
        )
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must hold whole numbers >= 1, got {ks}")
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(
            "choose_k needs samples from at least 2 cases for grouped folds, "
            f"got {n_groups}"
        )
    n_folds = max(2, min(int(n_folds), n_groups))

    results: list[dict[str, float]] = []
    total = n_folds * len(ks)
    stopped = False
    for fold, (train, held) in enumerate(grouped_folds(groups, n_folds)):
        if should_stop(stop):
            stopped = True
            break
        k_max = min(ks[-1], len(train))
        index = NearestNeighbors(n_neighbors=k_max, algorithm="brute").fit(X[train])
        neighbours = index.kneighbors(X[held], return_distance=False)
        hits = np.cumsum(y[train][neighbours], axis=1)
        for k in ks:
            kk = min(k, k_max)
            votes = hits[:, kk - 1] / kk
            held_y = y[held]
            if held_y.all() or not held_y.any():
                score = math.nan
            else:
                score = float(roc_auc_score(held_y, votes))
            results.append({"k": k, "fold": fold, "score": score})
            emit(
                on_result,
                Progress(
                    "cv",
                    len(results),
                    total,
                    {"k": k, "fold": fold, "score": score},
                    f"CV fold {fold + 1}/{n_folds}, k={k}: AUC {score:.4f}",
                ),
            )

    mean_scores = {}
    for k in ks:
        scores = [
            r["score"] for r in results if r["k"] == k and not math.isnan(r["score"])
        ]
        mean_scores[k] = float(np.mean(scores)) if scores else math.nan
    finite = {k: s for k, s in mean_scores.items() if not math.isnan(s)}
    if not finite:
        return KChoice(
            ks[-1], mean_scores, results, "auc_roc", stopped, n_folds=n_folds
        )
    best = max(finite, key=lambda k: (finite[k], -k))
    spread = [
        r["score"] for r in results if r["k"] == best and not math.isnan(r["score"])
    ]
    se = float(np.std(spread, ddof=1) / math.sqrt(len(spread))) if spread[1:] else 0.0
    # a larger k smooths more; past the plateau the gain is within the folds' noise
    chosen = min(k for k, score in finite.items() if score >= finite[best] - se)
    return KChoice(chosen, mean_scores, results, "auc_roc", stopped, best, se, n_folds)


# --------------------------------------------------------------------------------
# The model kind


_DEFAULTS: dict[str, Any] = {
    "features": "patch+bank",
    "patch_size": 1,
    "n_neighbors": None,
    "k_min": 1,
    "k_max": 101,
    "n_folds": 5,
    "rebuild": "pixel",
    "max_train_samples": 10000,
    "smooth_sigma": 0.7,
    "search": "screened",
    "screen_tolerance": 0.002,
    "screen_pixels_per_case": 2000,
    "threshold_cases": 10,
    "match_scale": True,
    "context": True,
    "context_samples": 10000,
    "context_weight": 2.0,
    "context_first_tolerance": 0.01,
    "seed": 0,
}


class KNNModel:
    """KNN vessel segmentation of fundus photographs (model kind ``"knn"``).

    Parameters
    ----------
    features : {"patch", "patch+bank", "bank"}, default="patch+bank"
        Pixel features, see `vessel_core.features`.
    patch_size : {1, 3, 5, 7}, default=1
        Side of the neighbourhood patch. With the filter bank, the pixel's own
        value (1) scored best on DRIVE (one stage: AUC 0.960 against 0.958 for
        3 x 3; two stages: AUC 0.965 against 0.963, F1 0.786 for both, and 3 x 3
        took 1.5 s per image instead of 0.8); alone, a patch needs 3 or more.
    n_neighbors : int or None, default=None
        Fixed k; None chooses it by grouped cross-validation among the odd
        numbers in ``[k_min, k_max]`` (`choose_k`).
    k_min, k_max, n_folds : int, default=1, 101, 5
    rebuild : {"pixel", "block"}, default="pixel"
        How the map is rebuilt: one decision per pixel, or one per
        ``patch_size`` x ``patch_size`` block (from the block's centre pixel;
        with ``patch_size=1`` that is per pixel again),
        copied to every pixel of the block (the student project's method; it
        makes fewer decisions and looks blockier; block filling can flatter
        accuracy when the mask is coarse, and hurts thin vessels).
    max_train_samples : int, default=10000
        Training samples kept from the selection, drawn evenly from each case.
        The exact search costs time in proportion to it.
    smooth_sigma : float, default=0.7
        Standard deviation (pixels) of a Gaussian smoothing of the vote map
        inside the FOV (0: none); neighbouring votes agree, and averaging them
        gives finer probabilities than k votes can.
    search : {"screened", "exact"}, default="screened"
        See `KNNClassifier`.
    screen_tolerance : float, default=0.002
        Estimated share of pixel labels the screen may change (see
        `KNNClassifier`).
    screen_pixels_per_case : int, default=2000
        FOV pixels per training case (drawn uniformly) that calibrate the screen.
    threshold_cases : int, default=10
        Training cases whose whole maps (each predicted without its own samples)
        fit the threshold.
    match_scale : bool, default=True
        Resize an image whose FOV diameter differs from the training images' by
        more than 15% to their scale before predicting (the map is resized back).
    context : bool, default=True
        Run a second stage (auto-context [2]_): a second k-NN whose pixels are
        described by the same features plus `vessel_core.features.context_planes`
        of the first stage's map (does the vessel evidence around the pixel line
        up?). Its training maps come from the first stage with each case's own
        samples left out, as a new image would see it. On DRIVE it lifts the
        pooled F1 from 0.767 to 0.787 and AUC from 0.960 to 0.964, for about
        twice the prediction time. False: one stage, the classic pixel
        classifier.
    context_samples : int, default=10000
        Training samples of the second stage, drawn evenly from each case.
    context_weight : float, default=2.0
        Scale of the context features against the standardised pixel features
        (their share of the distance).
    context_first_tolerance : float, default=0.01
        ``screen_tolerance`` of the first stage when it feeds a context stage:
        its map is only read blurred and along lines, where a few screened
        labels change nothing, so fewer of its pixels need the exact search.
        The final (second-stage) labels keep ``screen_tolerance``.
    seed : int, default=0
        Fixes the default selection, the subsampling and the screen.

    Attributes
    ----------
    kind : str
        ``"knn"``.
    threshold : float
        The probability threshold of best F1 on the training cases.
    meta : dict
        ``settings``, ``train_cases``, ``train_fingerprint``, ``feature_names``,
        ``chosen_k``, ``cv_best_k``, ``cv_standard_error``, ``cv_folds``, ``cv_scores``,
        ``cv_metric``, ``scores`` (training cases,
        each predicted without its own samples), ``screen``, ``selection``,
        ``n_train_samples``, ``training_fov_diameter``, ``fit_seconds``, and
        with ``context`` a ``context`` dict (``feature_names``,
        ``n_train_samples``, ``n_train_vessel``, ``screen``).

    References
    ----------
    .. [1] J. Staal, M. D. Abramoff, M. Niemeijer, M. A. Viergever and B. van
       Ginneken, "Ridge-based vessel segmentation in color images of the
       retina", IEEE Trans. Med. Imag. 23(4), 501-509, 2004.
       :doi:`10.1109/TMI.2004.825627`
    .. [2] Z. Tu and X. Bai, "Auto-context and its application to high-level
       vision tasks and 3D brain image segmentation", IEEE Trans. Pattern Anal.
       Mach. Intell. 32(10), 1744-1757, 2010. :doi:`10.1109/TPAMI.2009.186`
    """

    kind = "knn"
    SETTING_CHOICES = {
        "patch_size": [1, 3, 5, 7],
        "features": list(ft.FEATURE_SETS),
        "rebuild": list(REBUILDS),
        "search": list(SEARCHES),
    }

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(_DEFAULTS))
        if unknown:
            raise ValueError(
                f"KNNModel has no setting(s) {unknown}; its settings are "
                f"{sorted(_DEFAULTS)}"
            )
        self.settings = _resolve({**_DEFAULTS, **settings})
        self.threshold = 0.5
        self.meta: dict[str, Any] = {"settings": dict(self.settings)}
        self.classifier: KNNClassifier | None = None
        # the second (context) stage; None without ``context``
        self.context_classifier: KNNClassifier | None = None

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """Every setting with its default (flat, JSON-ready)."""
        return dict(_DEFAULTS)

    @property
    def feature_settings(self) -> ft.FeatureSettings:
        return ft.feature_settings(self.settings)

    # -- fitting ----------------------------------------------------------------------

    def fit(
        self,
        cases: Sequence[Case],
        selection=None,
        on_progress: Callable[[Progress], None] | None = None,
        stop: threading.Event | None = None,
    ) -> KNNModel:
        """Train on the cases that carry a vessel mask.

        Parameters
        ----------
        cases : sequence of Case
        selection : vessel_core.sampling.Selection, optional
            The training pixels per case. Default: ``sampling.select(cases,
            "near_vessels", seed=seed)`` (keeps every vessel pixel and 30% of the
            background, mostly near vessels).
        on_progress : callable, optional
            Gets ``"features"`` events (one per case), ``"cv"`` events (one per
            (k, fold) result), ``"fit"`` events (screen, threshold) and
            ``"done"``.
        stop : threading.Event, optional
            Checked between steps; a set flag raises `FitStopped` (no model is
            left half-built), except during cross-validation once a fold has
            scored (the best k so far finishes a whole one-stage model) and
            during the context stage (the first stage is kept alone); then
            ``meta["stopped_early"]`` says so and ``settings["context"]`` is
            False.

        Returns
        -------
        KNNModel
            ``self``.
        """
        from vessel_core import sampling

        started = time.monotonic()
        s = self.settings
        cases = fit_cases(cases)  # with a mask of both classes; warns of the rest
        if selection is None:
            selection = sampling.select(cases, "near_vessels", seed=s["seed"])
        cases = [c for c in cases if c.id in selection.per_case]
        if not cases:
            raise ValueError("the selection holds none of the cases' ids")
        fset = self.feature_settings
        rng = np.random.default_rng(s["seed"])
        quota = max(1, int(math.ceil(s["max_train_samples"] / len(cases))))

        # 1. features of the selected pixels and of the calibration pixels
        def pixel_rows(case):
            return ft.compute_planes(case, settings=fset).at

        X, y, groups, X_cal, g_cal = self._gather(
            cases, selection, quota, rng, pixel_rows, "features", on_progress, stop
        )
        if y.all() or not y.any():
            raise one_class_error(cases, bool(y.all()), undersampled=True)

        # 2. k by grouped cross-validation
        cv_results, cv_means, cv_best, cv_se, cv_folds = [], {}, None, 0.0, 0
        if s["n_neighbors"] is not None:
            k = int(s["n_neighbors"])
        elif len(cases) < 2:
            k = s["k_max"] | 1
            warn(
                f"KNNModel: one training case cannot be cross-validated; using k={k}",
                stacklevel=2,
            )
        else:
            ks = [k for k in range(s["k_min"], s["k_max"] + 1) if k % 2 == 1]
            choice = choose_k(
                X, y, groups, ks or [s["k_min"]], s["n_folds"], on_progress, stop
            )
            if choice.stopped and choice.results:
                # stopped mid-CV: the best k so far gives a whole model, quickly
                self.meta["stopped_early"] = (
                    f"during cross-validation, after {len(choice.results)} "
                    "(k, fold) results; the best k so far is used"
                )
                stop = None
            _check_stop(stop, "cross-validating k")
            k, cv_results, cv_means = choice.k, choice.results, choice.mean_scores
            cv_best, cv_se = choice.best_k, choice.standard_error
            cv_folds = choice.n_folds
        k = min(k, len(X))

        # 3. the classifier and its screen
        _check_stop(stop, "fitting the classifier")
        n_steps = 3 if s["context"] else 2
        emit(
            on_progress,
            Progress(
                "fit",
                0,
                n_steps,
                {"k": float(k)},
                f"fitting the {k}-NN screen: exact votes of up to "
                f"{KNNClassifier().max_screen_samples:,} calibration pixels, then a "
                "small network (up to about 20 s on DRIVE; a stop waits for it)",
            ),
        )
        classifier = KNNClassifier(
            n_neighbors=k,
            search=s["search"],
            screen_tolerance=_first_tolerance(s),
            random_state=s["seed"],
        )
        classifier.fit(X, y, groups=groups, X_screen=X_cal, groups_screen=g_cal)
        self.classifier = classifier
        self.meta.update(
            {
                "settings": dict(s),
                "train_cases": [c.id for c in cases],
                "train_fingerprint": fingerprint_cases(cases),
                "train_images": image_fingerprints(cases),
                "feature_names": ft.feature_names(fset),
                "chosen_k": int(k),
                "cv_best_k": cv_best,
                "cv_standard_error": cv_se,
                "cv_folds": cv_folds,
                "cv_metric": "auc_roc",
                "cv_scores": cv_results,
                "cv_mean_scores": {str(kk): v for kk, v in cv_means.items()},
                "screen": {
                    "low": classifier.screen_low_,
                    "high": classifier.screen_high_,
                    **classifier.screen_stats_,
                },
                "selection": selection.describe(),
                "n_train_samples": int(len(X)),
                "n_train_vessel": int(np.count_nonzero(y)),
                "training_fov_diameter": float(
                    np.median([pp.fov_diameter(c.fov_mask) for c in cases])
                ),
            }
        )

        # 4. the context stage, on first-stage maps without each case's samples
        # (a stop asked for during CV or this stage keeps the first stage alone)
        self.context_classifier = None
        if s["context"] and not self.meta.get("stopped_early"):
            emit(
                on_progress,
                Progress(
                    "fit", 1, n_steps, {"k": float(k)}, "fitting the context stage"
                ),
            )
            try:
                self._fit_context(cases, selection, rng, k, on_progress, stop)
            except FitStopped:
                self.meta["stopped_early"] = (
                    "during the context stage; the first stage alone is kept"
                )
                stop = None
        if s["context"] and self.context_classifier is None:
            s["context"] = self.meta["settings"]["context"] = False

        # 5. the threshold: whole training maps, each without its own samples
        _check_stop(stop, "fitting the threshold")
        emit(
            on_progress,
            Progress(
                "fit", n_steps - 1, n_steps, {"k": float(k)}, "fitting the threshold"
            ),
        )
        # after a stop, a quick threshold: the user is waiting
        self._fit_threshold(
            cases,
            rng,
            2 if self.meta.get("stopped_early") else None,
            on_progress,
            (n_steps - 1, n_steps),
        )
        self.meta["fit_seconds"] = time.monotonic() - started
        emit(
            on_progress,
            Progress(
                "done",
                1,
                1,
                {
                    "k": float(k),
                    "threshold": self.threshold,
                    **_short(self.meta["scores"]),
                },
                f"KNN fitted: k={k}, {len(X)} samples, threshold {self.threshold:.3f}, "
                f"screen answers {100 * classifier.screen_stats_['coverage']:.1f}% of "
                "pixels",
            ),
        )
        return self

    def _gather(self, cases, selection, quota, rng, rows_of, step, on_progress, stop):
        """Training and calibration rows of every case, for one stage.

        ``rows_of(case)`` returns a function from (N, 2) pixel coordinates to
        feature rows. Up to ``quota`` selected pixels per case are kept, and
        ``screen_pixels_per_case`` FOV pixels drawn uniformly calibrate the
        screen. Returns ``X, y, groups, X_cal, groups_cal``; one ``step``
        progress event per case.
        """
        what = {"features": "features", "context": "context features"}[step]
        X, y, groups, X_cal, g_cal = [], [], [], [], []
        for i, case in enumerate(cases):
            _check_stop(stop, f"computing {what}")
            read = rows_of(case)
            chosen = selection.per_case[case.id]
            keep = _subsample(len(chosen.coords), quota, rng)
            X.append(read(chosen.coords[keep]))
            y.append(np.asarray(chosen.labels)[keep].astype(bool))
            groups.append(np.full(len(keep), case.id))
            inside = np.argwhere(case.fov_mask)
            n_cal = self.settings["screen_pixels_per_case"]
            cal = inside[_subsample(len(inside), n_cal, rng)]
            X_cal.append(read(cal))
            g_cal.append(np.full(len(cal), case.id))
            emit(
                on_progress,
                Progress(
                    step,
                    i + 1,
                    len(cases),
                    {"samples": float(len(keep))},
                    f"{what} of case {case.id} ({i + 1}/{len(cases)}): "
                    f"{len(keep)} training pixels",
                ),
            )
        return tuple(np.concatenate(a) for a in (X, y, groups, X_cal, g_cal))

    def _fit_context(self, cases, selection, rng, k, on_progress, stop) -> None:
        """Fit the second stage on the context of first-stage training maps.

        Each case's first-stage map leaves out that case's own samples (as a
        new image would see the first stage); the second stage's samples are
        drawn from the same selection as the first's.
        """
        s = self.settings
        quota = max(1, int(math.ceil(s["context_samples"] / len(cases))))

        def context_rows(case):
            planes = ft.compute_planes(case, settings=self.feature_settings)
            context = self._context(planes, case.id if len(cases) > 1 else None)
            return lambda coords: _rows(planes, context, coords)

        X, y, groups, X_cal, g_cal = self._gather(
            cases, selection, quota, rng, context_rows, "context", on_progress, stop
        )
        classifier = KNNClassifier(
            n_neighbors=min(k, len(X)),
            search=s["search"],
            screen_tolerance=s["screen_tolerance"],
            random_state=s["seed"],
        )
        classifier.fit(X, y, groups=groups, X_screen=X_cal, groups_screen=g_cal)
        self.context_classifier = classifier
        self.meta["context"] = {
            "feature_names": ft.context_names(),
            "n_train_samples": int(len(X)),
            "n_train_vessel": int(np.count_nonzero(y)),
            "screen": {
                "low": classifier.screen_low_,
                "high": classifier.screen_high_,
                **classifier.screen_stats_,
            },
        }

    def _fit_threshold(
        self, cases: Sequence[Case], rng, at_most=None, on_progress=None, step=(0, 1)
    ) -> None:
        """The threshold of best F1 on whole training maps (own samples left out).

        One ``"threshold"`` event per map, its fraction on the fit's scale: the
        last ``step = (done, total)`` of the fit's steps.
        """
        from vessel_core import metrics

        n = min(len(cases), max(1, int(self.settings["threshold_cases"])))
        if at_most is not None:
            n = min(n, at_most)
        chosen = (
            sorted(rng.choice(len(cases), n, replace=False))
            if n < len(cases)
            else range(n)
        )
        picked = [cases[i] for i in chosen]
        maps = []
        for i, case in enumerate(picked):
            emit(
                on_progress,
                Progress(
                    "threshold",
                    step[0] * len(picked) + i,
                    step[1] * len(picked),
                    {},
                    f"fitting the threshold: whole map of case {case.id} "
                    f"({i + 1}/{len(picked)})",
                ),
            )
            exclude = case.id if len(cases) > 1 else None
            maps.append(self._predict(case.image, case.fov_mask, exclude_group=exclude))
        self.threshold = metrics.best_threshold(
            [c.vessel_mask for c in picked], maps, [c.fov_mask for c in picked]
        )
        report = metrics.evaluate(picked, maps, self.threshold)
        self.meta["scores"] = {
            "cases": [c.id for c in picked],
            "left_out_own_samples": len(cases) > 1,
            "mean": report.mean,
            "pooled": report.pooled,
        }

    # -- predicting -------------------------------------------------------------------

    def predict_proba(self, case_or_image: Case | NDArray) -> NDArray[np.float32]:
        """The vessel probability map of a case or an RGB image.

        Parameters
        ----------
        case_or_image : Case or (H, W, 3) uint8 ndarray
            An image without a case gets its FOV from
            `vessel_core.io.estimate_fov`.

        Returns
        -------
        (H, W) float32 ndarray
            Probabilities in [0, 1]; 0 outside the FOV.

        Notes
        -----
        FOV pixels are classified in chunks of ``chunk_size`` rows, so memory is
        bounded by the feature planes (about 0.33 GB for a 3504 x 2336 image at
        full scale) plus one chunk.
        """
        if self.classifier is None:
            raise ValueError("this KNNModel is not trained: call fit or load it first")
        image, fov = _image_and_fov(case_or_image)
        return self._predict(image, fov)

    def _predict(self, image, fov, exclude_group=None) -> NDArray[np.float32]:
        factor = 1.0
        if self.settings["match_scale"]:
            factor = pp.scale_factor(fov, self.meta.get("training_fov_diameter"))
        return pp.predict_at_scale(
            lambda im, fv: self._predict_native(im, fv, exclude_group),
            image,
            fov,
            factor,
        )

    def _predict_native(self, image, fov, exclude_group=None) -> NDArray[np.float32]:
        planes = ft.compute_planes(image, fov, self.feature_settings)
        block = (
            self.settings["patch_size"] if self.settings["rebuild"] == "block" else 1
        )
        coords = np.argwhere(fov) if block == 1 else block_centres(fov, block)
        if self.context_classifier is None:
            votes = self.predict_coords(planes, coords, exclude_group)
        else:
            context = self._context(planes, exclude_group)
            votes = _votes(
                self.context_classifier, planes, coords, exclude_group, context
            )
        return self.vote_map(votes, coords, fov, block)

    def vote_map(self, votes, coords, fov, block: int = 1) -> NDArray[np.float32]:
        """The probability map of the votes at ``coords`` (smoothed, 0 outside)."""
        if block == 1:
            prob = np.zeros(fov.shape, dtype=np.float32)
            prob[coords[:, 0], coords[:, 1]] = votes
        else:
            prob = fill_blocks(fov.shape, coords, votes, block)
        sigma = float(self.settings["smooth_sigma"])
        if sigma > 0:
            prob = smooth_inside(prob, fov, sigma)
        prob[~fov] = 0.0
        return np.clip(prob, 0.0, 1.0, out=prob)

    def _context(self, planes: ft.FeaturePlanes, exclude_group) -> NDArray[np.float32]:
        """Context planes of the first stage's per-pixel map of an image."""
        coords = np.argwhere(planes.fov_mask)
        first = self.vote_map(
            self.predict_coords(planes, coords, exclude_group), coords, planes.fov_mask
        )
        return ft.context_planes(
            first, planes.fov_mask, self.settings["context_weight"]
        )

    def predict_coords(
        self,
        planes: ft.FeaturePlanes,
        coords: NDArray,
        exclude_group=None,
        chunk_size: int = 262144,
    ) -> NDArray[np.float32]:
        """First-stage vessel votes of the pixels at ``coords``, in chunks."""
        return _votes(self.classifier, planes, coords, exclude_group, None, chunk_size)

    # -- saving -----------------------------------------------------------------------

    def save_files(self, folder: Path) -> None:
        """Write ``arrays.npz``: training samples, labels and the screen's weights.

        The context stage's arrays carry the prefix ``context_``.
        """
        if self.classifier is None:
            raise ValueError("this KNNModel is not trained: there is nothing to save")
        arrays = self.classifier.to_arrays()
        if self.context_classifier is not None:
            for key, value in self.context_classifier.to_arrays().items():
                arrays[_CONTEXT_PREFIX + key] = value
        np.savez(Path(folder) / ARRAYS_FILE, **arrays)

    @classmethod
    def load_files(cls, folder: Path, meta: dict[str, Any]) -> KNNModel:
        """Rebuild a model from ``arrays.npz`` and ``meta`` (loaded without pickle)."""
        path = Path(folder) / ARRAYS_FILE
        if not path.is_file():
            raise ValueError(f"{folder}: no {ARRAYS_FILE} in this knn model folder")
        settings = {k: v for k, v in meta.get("settings", {}).items() if k in _DEFAULTS}
        # models saved before the context stage existed have one stage
        settings.setdefault("context", False)
        model = cls(**settings)
        params = {
            "search": model.settings["search"],
            "screen_tolerance": model.settings["screen_tolerance"],
            "random_state": model.settings["seed"],
        }
        n_features = len(ft.feature_names(model.feature_settings))
        with np.load(path, allow_pickle=False) as arrays:
            stored = {k: arrays[k] for k in arrays.files}
        first = {k: v for k, v in stored.items() if not k.startswith(_CONTEXT_PREFIX)}
        model.classifier = KNNClassifier.from_arrays(first, **params)
        if model.classifier.n_features_in_ != n_features:
            raise ValueError(
                f"{path}: {model.classifier.n_features_in_} features stored, the "
                f"settings name {n_features}"
            )
        if model.settings["context"]:
            second = {
                k[len(_CONTEXT_PREFIX) :]: v
                for k, v in stored.items()
                if k.startswith(_CONTEXT_PREFIX)
            }
            if not second:
                raise ValueError(
                    f"{path}: the settings name a context stage, but the file holds "
                    f"no {_CONTEXT_PREFIX}* arrays"
                )
            model.context_classifier = KNNClassifier.from_arrays(second, **params)
            expected = n_features + len(ft.context_names())
            if model.context_classifier.n_features_in_ != expected:
                raise ValueError(
                    f"{path}: the context stage stores "
                    f"{model.context_classifier.n_features_in_} features, the "
                    f"settings name {expected}"
                )
        model.threshold = float(meta.get("threshold", 0.5))
        model.meta = {
            k: v for k, v in meta.items() if k not in ("kind", "name", "threshold")
        }
        return model


# --------------------------------------------------------------------------------
# Helpers shared with the classic model


def _resolve(settings: dict[str, Any]) -> dict[str, Any]:
    """Typed and checked settings."""
    s = dict(settings)
    ft.feature_settings(s)  # checks features and patch_size
    s["patch_size"] = int(s["patch_size"])
    for key in (
        "k_min",
        "k_max",
        "n_folds",
        "max_train_samples",
        "screen_pixels_per_case",
    ):
        s[key] = _whole(key, s[key], 1)
    s["threshold_cases"] = _whole("threshold_cases", s["threshold_cases"], 1)
    s["seed"] = _whole("seed", s["seed"], 0)
    if s["n_neighbors"] is not None:
        s["n_neighbors"] = _whole("n_neighbors", s["n_neighbors"], 1)
    if s["k_min"] > s["k_max"]:
        raise ValueError(f"k_min ({s['k_min']}) must not exceed k_max ({s['k_max']})")
    for key, allowed in (("rebuild", REBUILDS), ("search", SEARCHES)):
        if s[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {s[key]!r}")
    s["smooth_sigma"] = float(s["smooth_sigma"])
    if s["smooth_sigma"] < 0:
        raise ValueError(f"smooth_sigma must be >= 0, got {s['smooth_sigma']!r}")
    for key in ("screen_tolerance", "context_first_tolerance"):
        s[key] = float(s[key])
        if not 0 <= s[key] < 0.5:
            raise ValueError(f"{key} must be in [0, 0.5), got {s[key]!r}")
    s["match_scale"] = bool(s["match_scale"])
    s["context"] = bool(s["context"])
    s["context_samples"] = _whole("context_samples", s["context_samples"], 1)
    s["context_weight"] = float(s["context_weight"])
    if not s["context_weight"] > 0:
        raise ValueError(f"context_weight must be > 0, got {s['context_weight']!r}")
    return s


def _first_tolerance(settings: dict[str, Any]) -> float:
    """The screen tolerance of the first stage (looser when it feeds a context)."""
    if settings["context"]:
        return settings["context_first_tolerance"]
    return settings["screen_tolerance"]


def _whole(key: str, value: Any, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a whole number, got {value!r}") from None
    if number != float(value) or number < minimum:
        raise ValueError(f"{key} must be a whole number >= {minimum}, got {value!r}")
    return number


def _votes(
    classifier: KNNClassifier,
    planes: ft.FeaturePlanes,
    coords: NDArray,
    exclude_group=None,
    context: NDArray | None = None,
    chunk_size: int = 262144,
) -> NDArray[np.float32]:
    """Vessel votes of ``classifier`` for the pixels at ``coords``, in chunks."""
    out = np.empty(len(coords), dtype=np.float32)
    for start in range(0, len(coords), chunk_size):
        rows = _rows(planes, context, coords[start : start + chunk_size])
        proba = classifier.predict_proba(rows, exclude_group=exclude_group)
        out[start : start + chunk_size] = proba[:, -1]
    return out


def _rows(
    planes: ft.FeaturePlanes, context: NDArray | None, coords: NDArray
) -> NDArray[np.float32]:
    """Feature rows at ``coords``: the pixel features, then the context's."""
    rows = planes.at(coords)
    if context is None:
        return rows
    return np.hstack([rows, context[coords[:, 0], coords[:, 1]]])


def _check_stop(stop: threading.Event | None, step: str) -> None:
    if should_stop(stop):
        raise FitStopped(f"stopped while {step}; no model was fitted")


def _subsample(n: int, quota: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """Sorted indices of ``min(n, quota)`` of ``range(n)`` drawn without replacement."""
    if n <= quota:
        return np.arange(n)
    return np.sort(rng.choice(n, quota, replace=False))


def _short(scores: dict[str, Any]) -> dict[str, float]:
    pooled = scores.get("pooled", {})
    return {f"train_{k}": float(pooled[k]) for k in ("auc_roc", "f1") if k in pooled}


def _image_and_fov(case_or_image: Case | NDArray) -> tuple[NDArray, NDArray[np.bool_]]:
    """The image and FOV mask of a case, or of an image (FOV estimated)."""
    if isinstance(case_or_image, Case):
        image, fov = case_or_image.image, case_or_image.fov_mask
    else:
        image = pp.check_image(case_or_image)
        from vessel_core.io import estimate_fov

        fov = estimate_fov(image)
    image = pp.check_image(image)
    return image, pp.check_fov(fov, image.shape[:2])


def block_centres(fov_mask: NDArray[np.bool_], block: int) -> NDArray[np.intp]:
    """Centres (row, col) of the ``block`` x ``block`` tiles that touch the FOV.

    Tiles start at (0, 0); a tile cut by the image border is centred on its
    part inside the image.
    """
    height, width = fov_mask.shape
    n_r, n_c = -(-height // block), -(-width // block)
    # does each tile hold an FOV pixel? (a max-pool of the mask)
    padded = np.zeros((n_r * block, n_c * block), dtype=bool)
    padded[:height, :width] = fov_mask
    touched = padded.reshape(n_r, block, n_c, block).any(axis=(1, 3))
    tile_r, tile_c = np.nonzero(touched)
    start_r, start_c = tile_r * block, tile_c * block
    rows = start_r + np.minimum(block, height - start_r) // 2
    cols = start_c + np.minimum(block, width - start_c) // 2
    return np.stack([rows, cols], axis=1).astype(np.intp)


def fill_blocks(
    shape: tuple[int, int], centres: NDArray, values: NDArray, block: int
) -> NDArray[np.float32]:
    """A map where every pixel of a ``block`` x ``block`` tile holds the value
    decided at that tile's centre (`block_centres`); other tiles are 0."""
    height, width = shape
    n_r, n_c = -(-height // block), -(-width // block)
    grid = np.zeros((n_r, n_c), dtype=np.float32)
    grid[centres[:, 0] // block, centres[:, 1] // block] = values
    full = np.repeat(np.repeat(grid, block, axis=0), block, axis=1)
    return np.ascontiguousarray(full[:height, :width])


def smooth_inside(
    prob: NDArray[np.float32], fov_mask: NDArray[np.bool_], sigma: float
) -> NDArray[np.float32]:
    """Gaussian smoothing of a map inside the FOV (normalised convolution)."""
    inside = fov_mask.astype(np.float32)
    blurred = cv2.GaussianBlur(prob * inside, (0, 0), sigma)
    weight = cv2.GaussianBlur(inside, (0, 0), sigma)
    return np.where(fov_mask, blurred / np.maximum(weight, 1e-6), 0.0).astype(
        np.float32
    )
