"""The log throttle: one line per key per interval, the next one counts what was held back."""

from __future__ import annotations

from control_service.server.throttle import Throttle


def test_one_line_per_interval_then_the_count_held_back() -> None:
    now = [100.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    assert throttle.allow("unmatched") == 0
    assert [throttle.allow("unmatched") for _ in range(1999)] == [None] * 1999
    assert throttle.allow("malformed") == 0, "each kind of line has its own budget"
    now[0] += 1.0
    assert throttle.allow("unmatched") == 1999, "the next line says how many were held"
    assert throttle.allow("unmatched") is None
    now[0] += 5.0
    assert throttle.allow("unmatched") == 1
