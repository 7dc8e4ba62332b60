"""One small progress event shared by every long step (fit, CV, predict).

Models call ``on_progress(Progress(...))`` and check ``stop.is_set()``; they never
know whether a page, the CLI's log or a test is listening.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

ProgressCallback = Callable[["Progress"], None]


@dataclass(frozen=True)
class Progress:
    """What a long step has done so far.

    Attributes
    ----------
    step : str
        What is running: ``"cv"`` (one (k, fold) result), ``"batch"``, ``"epoch"``,
        ``"features"``, ``"fit"``, ``"predict"``, ``"done"``...
    done, total : int
        How far this step is; ``total`` is 0 when unknown.
    metrics : dict of str to float
        The latest figures (``{"k": 5, "fold": 2, "score": 0.81}``, ``{"loss": .3}``).
    message : str
        One human sentence, for a status line or a log.
    """

    step: str
    done: int = 0
    total: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


def emit(on_progress: ProgressCallback | None, event: Progress) -> None:
    """Send ``event`` to ``on_progress`` if there is one."""
    if on_progress is not None:
        on_progress(event)


def log_progress(logger: logging.Logger) -> ProgressCallback:
    """A callback that writes each event's message to ``logger`` (for the CLI)."""

    def _log(event: Progress) -> None:
        if event.message:
            logger.info(event.message)

    return _log


class StopFlag(threading.Event):
    """A stop request: ``set()`` it from anywhere, models poll ``is_set()``."""


def should_stop(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()


# ---------------------------------------------------------------------------
# Warnings kept per thread
#
# `warnings.catch_warnings` swaps process-wide state and puts back what it found,
# so two threads that enter and leave it out of turn leave it wrong: warnings
# filtered out, or recorded into a list nobody reads, for good. The app runs fits,
# loads and scoring in threads, so the package never uses it there: it warns with
# `warn`, and whoever shows a thread's warnings (a job, the Data page) opens
# `kept_warnings` in that thread, which changes nothing outside it.

_KEPT = threading.local()


def warn(
    message: str | Warning, category: type[Warning] = UserWarning, stacklevel: int = 1
) -> None:
    """`warnings.warn`, and the message kept by each `kept_warnings` open in this
    thread (whatever the warning filters say)."""
    text = str(message)
    for kept in getattr(_KEPT, "lists", ()):
        if text not in kept:
            kept.append(text)
    warnings.warn(message, category, stacklevel=stacklevel + 1)


@contextmanager
def kept_warnings(into: list[str] | None = None) -> Iterator[list[str]]:
    """The messages `warn` gives in this thread while open, each once.

    Parameters
    ----------
    into : list of str, optional
        The list to append to (a job's, read by a page while the fit runs);
        a new one by default.
    """
    kept = [] if into is None else into
    lists = _KEPT.__dict__.setdefault("lists", [])
    lists.append(kept)
    try:
        yield kept
    finally:
        lists.remove(kept)


def silence(
    category: type[Warning] = Warning, module: str = "", message: str = ""
) -> None:
    """Turn off, for good, the warnings of another library that this package
    has no use for (a filter added once, never put back: safe across threads).

    ``module`` and ``message`` are regular expressions, as in
    `warnings.filterwarnings`.
    """
    warnings.filterwarnings("ignore", message, category, module)
