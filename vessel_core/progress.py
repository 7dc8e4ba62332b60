"""One small progress event shared by every long step (fit, CV, predict).

Models call ``on_progress(Progress(...))`` and check ``stop.is_set()``; they never
know whether a page, the CLI's log or a test is listening.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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
