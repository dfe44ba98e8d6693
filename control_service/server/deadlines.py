"""Deadline timers for many calls on few event-loop timers.

Every mutating call has a deadline, and nearly every call ends long before it. One loop timer
per call meant creating and cancelling a uvloop timer handle on every call. Here deadlines fall
into buckets `resolution` wide, and each bucket holding a pending deadline has one loop timer:
at 3,000 calls/s and 5 ms buckets, ~200 timers a second instead of 3,000. A deadline fires at
the end of its bucket: up to `resolution` late, never early.

A bucket's timer is cancelled when its last deadline is, except for the newest bucket, which the
next call most likely lands in (one call after another, at 1 in flight): that one empty bucket
keeps its timer until a newer bucket is made or the timer fires, as a no-op. So at most one
timer outlives the calls it served, and an idle service has at most one pending timer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

DEFAULT_RESOLUTION_S = 0.005


class Deadline:
    """One call's place in its bucket; `cancel` when the call ends first (idempotent)."""

    __slots__ = ("_bucket", "_deadlines", "_key")

    def __init__(self, deadlines: Deadlines, bucket: int, key: object) -> None:
        self._deadlines = deadlines
        self._bucket = bucket
        self._key = key

    def cancel(self) -> None:
        self._deadlines._remove(self._bucket, self._key)


class Deadlines:
    """Calls `callback(key)` at each key's deadline (loop time), unless cancelled first."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, resolution: float = DEFAULT_RESOLUTION_S
    ) -> None:
        self._loop = loop
        self._resolution = resolution
        # bucket number -> (its loop timer, key -> callback of the deadlines in it)
        self._buckets: dict[int, tuple[asyncio.TimerHandle, dict[object, Callable[[Any], None]]]]
        self._buckets = {}
        self._newest: int | None = None  # the bucket made last

    def __len__(self) -> int:
        """Deadlines pending."""
        return sum(len(keys) for _, keys in self._buckets.values())

    @property
    def timers(self) -> int:
        """Loop timers armed: one per bucket with a pending deadline, plus at most one empty."""
        return len(self._buckets)

    def add(self, when: float, key: object, callback: Callable[[Any], None]) -> Deadline:
        bucket = math.ceil(when / self._resolution)
        entry = self._buckets.get(bucket)
        if entry is None:
            timer = self._loop.call_at(bucket * self._resolution, self._fire, bucket)
            entry = self._buckets[bucket] = (timer, {})
            newest, self._newest = self._newest, bucket
            if newest is not None:
                self._drop_if_empty(newest)
        entry[1][key] = callback
        return Deadline(self, bucket, key)

    def _remove(self, bucket: int, key: object) -> None:
        entry = self._buckets.get(bucket)
        if entry is not None and entry[1].pop(key, None) is not None and bucket != self._newest:
            self._drop_if_empty(bucket)

    def _drop_if_empty(self, bucket: int) -> None:
        entry = self._buckets.get(bucket)
        if entry is not None and not entry[1]:
            entry[0].cancel()  # the bucket's last deadline went: its timer goes too
            del self._buckets[bucket]

    def _fire(self, bucket: int) -> None:
        if bucket == self._newest:
            self._newest = None
        entry = self._buckets.pop(bucket, None)
        if entry is not None:
            for key, callback in list(entry[1].items()):
                callback(key)
