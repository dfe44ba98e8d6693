"""Bounded per-caller queues: a slow reader loses the oldest progress events, never a result."""

from __future__ import annotations

from control_service.protocol import wire
from control_service.server.operations import Event, Subscriber


async def test_full_queue_drops_oldest_progress_and_keeps_every_terminal() -> None:
    sub = Subscriber(limit=4)
    for i in range(100):
        sub.push(Event("e0", i + 1, wire.progress("r", "load", i, 100)))
    sub.push(Event("e0", 101, wire.result("r", wire.state(True, "v", 0))))
    sub.push(Event("e1", 1, wire.error("r", "NOT_FOUND", "x")))
    sub.close()
    got = [event async for event in sub]
    assert [e.reply.kind for e in got] == ["progress"] * 4 + ["result", "error"]
    assert [e.seq for e in got[:4]] == [97, 98, 99, 100], "the newest progress is kept"
    assert sub.dropped == 96


async def test_terminals_beyond_the_limit_are_never_dropped() -> None:
    sub = Subscriber(limit=2)
    for engine in range(10):
        sub.push(Event(f"e{engine}", 1, wire.result("r", wire.state(True, "v", 0))))
    sub.close()
    assert len([event async for event in sub]) == 10 and sub.dropped == 0


def test_summarize_tolerates_up_to_max_failed() -> None:
    import grpc

    from control_service.errors import EngineFailure
    from control_service.server.operations import summarize

    failures = [EngineFailure("e3", grpc.StatusCode.NOT_FOUND, "gone"),
                EngineFailure("e5", grpc.StatusCode.UNAVAILABLE, "lost")]  # fmt: skip
    ok = summarize(failures, 8, True, max_failed=2)
    assert ok.ok and ok.failures == tuple(failures)
    assert ok.message.startswith("2 of 8 engines failed: e3: NOT_FOUND: gone; e5: UNAVAILABLE")
    assert summarize(failures, 8, True, max_failed=1).code is grpc.StatusCode.UNAVAILABLE
    assert summarize(failures, 8, True).code is grpc.StatusCode.UNAVAILABLE, "default: none"
    assert summarize(failures[:1], 8, True).code is grpc.StatusCode.NOT_FOUND
