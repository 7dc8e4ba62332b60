"""What a browser session has loaded and chosen, kept on the server across reloads.

A browser reload starts a new Streamlit session with empty state. The app puts its
session id in the page address (``?session=...``); when a new session arrives with
an id this memory knows, it takes that session's id, its jobs and what it had
loaded back. Ids the memory never gave out are refused, so a made-up or stale
address (after a server restart, say) starts afresh.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

#: A session id as `SessionMemory.new_id` makes it.
_ID = re.compile(r"[0-9a-f]{32}")


class SessionMemory:
    """Per-session values, kept ``timeout`` seconds after the session last wrote.

    Parameters
    ----------
    timeout : float, default 1800
        Seconds a session's values outlive its last `remember` or `touch`; a
        session gone longer is forgotten (its values freed) on the next access.
    clock : callable, optional
        Seconds, monotonic (for tests).
    """

    def __init__(
        self, timeout: float = 1800.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout = float(timeout)
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, float] = {}

    def new_id(self) -> str:
        """A fresh session id, known from now on."""
        sid = uuid.uuid4().hex
        with self._lock:
            self._values[sid] = {}
            self._seen[sid] = self._clock()
        return sid

    def known(self, sid: object) -> bool:
        """Whether ``sid`` is an id this memory gave out and still holds."""
        if not isinstance(sid, str) or not _ID.fullmatch(sid):
            return False
        with self._lock:
            self._forget_gone()
            return sid in self._values

    def remember(
        self, sid: str, now: dict[str, Any], before: dict[str, Any] | None = None
    ) -> None:
        """Write what session ``sid`` changed, as one browser tab saw it.

        Parameters
        ----------
        sid : str
        now : dict
            What the tab holds now.
        before : dict, optional
            What it held when it last remembered or recalled; None: nothing.
            Only keys whose values differ from it are written, and keys it held
            and no longer does are dropped, so two tabs on one session each keep
            their own changes instead of the last one to run overwriting all.

        Notes
        -----
        Values are kept by reference (images stay shared, not doubled). Lists,
        dicts and plain values count as unchanged when equal; anything else
        only when it is the same object.
        """
        before = before or {}
        changed = {
            k: v for k, v in now.items() if k not in before or not _same(before[k], v)
        }
        with self._lock:
            held = self._values.setdefault(sid, {})
            held.update(changed)
            for key in before.keys() - now.keys():
                held.pop(key, None)
            self._seen[sid] = self._clock()

    def news(
        self, sid: str, mine: Mapping[str, Any], before: Mapping[str, Any]
    ) -> tuple[dict[str, Any], set[str]]:
        """What another tab on ``sid`` changed that this tab has not.

        Parameters
        ----------
        sid : str
        mine : mapping
            What this tab holds now (its session state).
        before : mapping
            What it held when it last remembered or recalled.

        Returns
        -------
        (dict, set)
            The values to take in, and the keys to drop: each a key whose kept
            value differs from ``before`` (another tab changed it) while this
            tab's own value does not (a change of its own stands, and its next
            `remember` writes it).
        """
        with self._lock:
            held = dict(self._values.get(sid, {}))
        take: dict[str, Any] = {}
        drop: set[str] = set()
        for key in held.keys() | before.keys():
            if _differs(held, before, key) and not _differs(mine, before, key):
                if key in held:
                    take[key] = held[key]
                else:
                    drop.add(key)
        return take, drop

    def recall(self, sid: str) -> dict[str, Any]:
        """A copy of what session ``sid`` kept ({} for an unknown one)."""
        with self._lock:
            self._forget_gone()
            if sid in self._values:
                self._seen[sid] = self._clock()
            return dict(self._values.get(sid, {}))

    def __len__(self) -> int:
        with self._lock:
            self._forget_gone()
            return len(self._values)

    def _forget_gone(self) -> None:
        now = self._clock()
        for sid in [s for s, t in self._seen.items() if now - t > self.timeout]:
            del self._seen[sid]
            self._values.pop(sid, None)


def _differs(values: Mapping[str, Any], before: Mapping[str, Any], key: str) -> bool:
    """Whether ``values`` holds ``key`` otherwise than ``before`` does."""
    if (key in values) != (key in before):
        return True
    return key in values and not _same(before[key], values[key])


def _same(a: Any, b: Any) -> bool:
    """Whether a tab's value is unchanged: the same object, or equal plain data."""
    if a is b:
        return True
    if type(a) is not type(b) or not isinstance(a, str | int | float | list | dict):
        return False
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # arrays inside: compared element-wise
        return False
