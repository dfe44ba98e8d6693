"""Repeated log lines, thinned: one line per kind per interval, the next one says how many were
held back. An engine that sends 2,000 stray replies in a burst writes one line, not 2,000."""

from __future__ import annotations

import time
from collections.abc import Callable


class Throttle:
    """At most one line per key per `interval_s`. `allow(key)` returns None when the line is to
    be held back, else how many lines of that key were held back since the last one."""

    __slots__ = ("_clock", "_held", "_interval", "_last")

    def __init__(
        self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)
