"""Putting several models side by side: the all-background baseline, scoring and
tables.

Scores come from `vessel_core.metrics.evaluate`. `score_models` scores several
models on the same cases (one failing model does not hide the others), `Scoring`
runs it in a thread that outlives a page's script, and `MapCache` keeps maps
between runs; the rest arranges reports into rows for tables and charts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vessel_core.cases import Case, image_fingerprints
from vessel_core.metrics import Report
from vessel_core.progress import Progress, ProgressCallback, emit, should_stop

logger = logging.getLogger(__name__)

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


def trained_on(model: Any, cases: Sequence[Case]) -> list[str]:
    """The ids of those ``cases`` whose image ``model`` was trained on, in order.

    By image content (``meta["train_images"]``), so a training image under
    another name or id counts, and another dataset's case ``01`` does not; a
    model saved before that was recorded is matched by case id. A model started
    from another one's weights counts that one's training images too. Scores on
    such cases are optimistic: a model should be judged on images it never saw.
    """
    meta = getattr(model, "meta", None) or {}
    images = meta.get("train_images")
    if images is not None:
        # and those a model it started from learned from (`ResNetUNet` init_from)
        earlier = (meta.get("started_from") or {}).get("learned_images") or ()
        seen = set(images) | set(earlier)
        return [
            c.id
            for c, fp in zip(cases, image_fingerprints(cases), strict=True)
            if fp in seen
        ]
    ids = set(meta.get("train_cases") or ())
    return [c.id for c in cases if c.id in ids]


def summary_rows(
    reports: Mapping[str, Report],
    which: str = "mean",
    seconds: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per model: its name, threshold, `TABLE_METRICS` and seconds/image.

    The `ALL_BACKGROUND` row's threshold is None.

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
        # the baseline's map is constant: no threshold means anything for it
        threshold = None if name == ALL_BACKGROUND else report.threshold
        row: dict[str, Any] = {"model": name, "threshold": threshold}
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


# ---------------------------------------------------------------------------------
# Scoring several models, in the background


class SharedCache:
    """Values by key, each computed once and shared by every thread.

    The least recently used go first once their costs add up past ``max_cost``
    (the newest value always stays). Two threads asking for one missing key may
    both compute it; the first to finish is kept.
    """

    def __init__(self, max_cost: float, cost: Callable[[Any], float] = lambda v: 1):
        self.max_cost = float(max_cost)
        self._cost = cost
        self._values: OrderedDict[Hashable, Any] = OrderedDict()
        self._total = 0.0
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value under ``key``, computed by ``compute`` if missing."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = compute()
        with self._lock:
            if key in self._values:  # another thread was first
                return self._values[key]
            self._values[key] = value
            self._total += self._cost(value)
            while self._total > self.max_cost and len(self._values) > 1:
                _, old = self._values.popitem(last=False)
                self._total -= self._cost(old)
        return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._values

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


class MapCache(SharedCache):
    """Probability maps with the seconds each took, bounded by the maps' bytes,
    so a few HRF-sized maps cannot fill the memory as a count bound would let
    them. A map is read-only: every page and thread shares it."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        super().__init__(max_bytes, cost=lambda entry: entry[0].nbytes)

    def get(
        self, key: Hashable, compute: Callable[[], NDArray]
    ) -> tuple[NDArray[np.float32], float]:
        """``(map, seconds)`` under ``key``, computed and timed if missing."""

        def timed():
            start = time.perf_counter()
            prob = np.asarray(compute(), np.float32)
            prob.setflags(write=False)
            return prob, time.perf_counter() - start

        return super().get(key, timed)


#: ``predict(name, model, case) -> (probability map, seconds)``
Predictor = Callable[[str, Any, Case], tuple[NDArray[np.float32], float]]


def _timed(name: str, model: Any, case: Case) -> tuple[NDArray[np.float32], float]:
    start = time.perf_counter()
    prob = np.asarray(model.predict_proba(case), np.float32)
    return prob, time.perf_counter() - start


@dataclass
class Scored:
    """What `score_models` found.

    Attributes
    ----------
    reports : dict of model name to Report
        The models that were scored, then `ALL_BACKGROUND`.
    seconds : dict of model name to float
        Seconds per image (as first predicted: a cached map keeps its time).
    errors : dict of model name to str
        Why a model was left out.
    stopped : bool
        A stop request ended the scoring; ``reports`` is then empty.
    """

    reports: dict[str, Report] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    stopped: bool = False


def score_models(
    models: Mapping[str, Any],
    cases: Sequence[Case],
    predict: Predictor | None = None,
    on_progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> Scored:
    """Score each model on ``cases`` (with vessel masks), then the baseline.

    Parameters
    ----------
    models : mapping of name to model, or to a callable that loads it
        Each model has ``predict_proba(case)`` and ``threshold``; a callable
        (anything without ``predict_proba``) is called first, here, so that a
        slow load is part of the work (a ``"load"`` event).
    cases : sequence of Case
    predict : callable, optional
        ``predict(name, model, case) -> (map, seconds)``, to cache maps; default
        times ``model.predict_proba``.
    on_progress : callable, optional
        A ``"predict"`` event before each (model, case) map.
    stop : threading.Event, optional
        Checked before each map: the scoring ends, ``stopped`` and empty.

    A model that fails (to load, predict or be scored) is left out, with the
    reason in ``errors``; the others are still scored.
    """
    from vessel_core import metrics

    predict = predict or _timed
    out = Scored()
    total, done = len(models) * len(cases), 0
    for name, model in models.items():
        maps, seconds = {}, 0.0
        try:
            if not hasattr(model, "predict_proba"):
                if should_stop(stop):
                    return Scored(stopped=True)
                emit(
                    on_progress,
                    Progress("load", done, total, message=f"loading {name}"),
                )
                model = model()
            for case in cases:
                if should_stop(stop):
                    return Scored(stopped=True)
                emit(
                    on_progress,
                    Progress(
                        "predict",
                        done,
                        total,
                        message=f"{name} on case {case.id}",
                    ),
                )
                maps[case.id], took = predict(name, model, case)
                seconds += took
                done += 1
            out.reports[name] = metrics.evaluate(
                cases, maps, threshold=model.threshold, quiet=True
            )
            out.seconds[name] = seconds / max(len(cases), 1)
        except Exception as exc:  # one broken model must not hide the others
            logger.warning("scoring %s failed: %s", name, exc)
            out.errors[name] = (
                str(exc)
                if isinstance(exc, ValueError)
                else f"{type(exc).__name__}: {exc}"
            )
            done = (list(models).index(name) + 1) * len(cases)
    baseline = AllBackground()
    out.reports[ALL_BACKGROUND] = metrics.evaluate(
        cases, [baseline.predict_proba(c) for c in cases], quiet=True
    )
    emit(on_progress, Progress("done", total, total, message="scored"))
    return out


class Scoring:
    """`score_models` in a thread of its own, so that a page may come and go.

    A browser reload or a move to another page ends the page's script, not
    this thread; the page finds it again (by session) and shows where it is.

    Attributes
    ----------
    label : dict
        What the caller chose (echoed back, e.g. the pickers' values).
    result : Scored or None
        Once `finished`.
    """

    def __init__(
        self,
        models: Mapping[str, Any],
        cases: Sequence[Case],
        predict: Predictor | None = None,
        label: Mapping[str, Any] | None = None,
    ) -> None:
        self.label = dict(label or {})
        self.total = len(models) * len(cases)
        self.result: Scored | None = None
        self._last = Progress("predict", 0, self.total, message="starting")
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(dict(models), list(cases), predict),
            daemon=True,
            name="vessel-scoring",
        )
        self._thread.start()

    def _run(self, models, cases, predict) -> None:
        try:
            self.result = score_models(
                models, cases, predict, self._progress, self._stop
            )
        except Exception as exc:  # the baseline or the arguments: told, not lost
            logger.exception("scoring failed")
            self.result = Scored(errors={"scoring": f"{type(exc).__name__}: {exc}"})
        finally:
            self._done.set()

    def _progress(self, event: Progress) -> None:
        self._last = event

    @property
    def progress(self) -> Progress:
        """The last progress event."""
        return self._last

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def stop(self) -> None:
        """Ask the scoring to end before its next map."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until finished (at most ``timeout`` seconds); whether it is."""
        return self._done.wait(timeout)
