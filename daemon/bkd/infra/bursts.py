"""Coalescing bursts: one record per key per window, with a count.

A flood of the same event (refused calls of one uid and method, refused
connections of one uid) must still be accounted for, but must not grow the
audit log or the journal with it. The first occurrence of a key is reported
at once; the repeats that follow within `window` seconds are counted and
reported as one summary when the window ends, which starts the next window.
A quiet window ends the burst. So a key costs at most one record per window
after its first, and every occurrence is in some record's count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime

from . import clock


@dataclass
class Burst:
    count: int = 0  # repeats since the last record
    first: datetime | None = None  # the first and the last of them
    last: datetime | None = None
    data: object = None  # what the last of them carried
    timer: asyncio.TimerHandle | None = None


class Bursts:
    def __init__(self, window: float, summary: Callable[[Hashable, Burst], None]):
        self.window = window
        self.summary = summary  # called with the key and its repeats when a window ends
        self._bursts: dict[Hashable, Burst] = {}

    def hit(self, key: Hashable, data: object = None) -> bool:
        """Count one occurrence; True when it is the first of a burst (report it now)."""
        burst = self._bursts.get(key)
        if burst is None:
            self._bursts[key] = burst = Burst()
            burst.timer = asyncio.get_running_loop().call_later(self.window, self._window_ended, key)
            return True
        now = clock.now()
        burst.count += 1
        burst.first = burst.first or now
        burst.last = now
        burst.data = data
        return False

    def _window_ended(self, key: Hashable) -> None:
        burst = self._bursts.pop(key)
        if burst.count == 0:
            return  # quiet: the burst is over
        self.summary(key, burst)
        self._bursts[key] = Burst(timer=asyncio.get_running_loop().call_later(self.window, self._window_ended, key))

    def flush(self) -> None:
        """Report every pending count now (at shutdown), so none is lost."""
        for key, burst in list(self._bursts.items()):
            burst.timer.cancel()
            if burst.count:
                self.summary(key, burst)
        self._bursts.clear()
