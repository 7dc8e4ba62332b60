"""How many torch CPU threads to use, given what other processes keep busy.

torch's OpenMP threads wait for each other at the end of every parallel region.
When another process holds a core, a thread of ours that lost its core stalls
all the others: on a 2-core machine with one core taken, a training batch took
11 s with 2 threads and 2.2 s with 1. So the thread count follows the cores that
are free, measured from ``/proc/stat`` (Linux; elsewhere torch's default stays).
"""

from __future__ import annotations

import os
import time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _sample() -> tuple[float, float, float] | None:
    """(monotonic seconds, busy CPU seconds of the machine, CPU seconds of ours)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields]
    # user nice system idle iowait irq softirq steal ...: busy = all but idle, iowait
    busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)
    ours = int(own[11]) + int(own[12])
    return time.monotonic(), busy / _TICK, ours / _TICK


class ThreadPolicy:
    """Chooses torch's thread count from the cores other processes left free.

    Parameters
    ----------
    fixed : int
        A thread count to keep (``num_threads`` setting); 0 adapts.
    interval : float
        Seconds between two measurements of the other processes' load.
    """

    def __init__(self, fixed: int = 0, interval: float = 5.0) -> None:
        self.fixed = int(fixed)
        self.interval = float(interval)
        self.cores = os.cpu_count() or 1
        self._last = _sample()
        self.others = 0.0

    def threads(self) -> int:
        """The thread count to use now."""
        if self.fixed > 0:
            return self.fixed
        # a core counts as free when at least 3/4 of it is
        return max(1, min(self.cores, int(self.cores - self.others + 0.25)))

    def update(self, force: bool = False) -> int:
        """Measure the others' load if ``interval`` has passed; set torch's threads.

        ``force`` measures over a short pause when the last measurement is recent
        or missing (a prediction that starts from idle).
        """
        import torch

        if self.fixed <= 0 and self._last is not None:
            now = _sample()
            if now is not None and force and now[0] - self._last[0] < 0.05:
                time.sleep(0.05)
                now = _sample()
            if now is not None and (force or now[0] - self._last[0] >= self.interval):
                elapsed = now[0] - self._last[0]
                if elapsed > 0:
                    busy = (now[1] - self._last[1]) - (now[2] - self._last[2])
                    self.others = max(0.0, busy / elapsed)
                self._last = now
        wanted = self.threads()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        return wanted
