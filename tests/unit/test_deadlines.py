"""Deadline buckets (control_service/deadlines.py) on a real event loop: never early, at most a
bucket late, a cancelled deadline never fires, and no timer is left behind by finished calls."""

from __future__ import annotations

import asyncio

from control_service.server.deadlines import Deadlines

RESOLUTION = 0.02


async def test_a_deadline_fires_at_the_end_of_its_bucket_never_early() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, RESOLUTION)
    fired: asyncio.Future[float] = loop.create_future()
    when = loop.time() + 0.05
    deadlines.add(when, "a", lambda key: fired.set_result(loop.time()))
    at = await asyncio.wait_for(fired, 5)
    # uvloop's clock has millisecond steps: allow one below `when`
    assert when - 0.001 <= at < when + RESOLUTION + 0.5
    assert len(deadlines) == 0 and deadlines.timers == 0


async def test_cancelled_deadlines_never_fire_and_share_one_timer_per_bucket() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, RESOLUTION)
    fired: list[str] = []
    later: asyncio.Future[None] = loop.create_future()
    when = loop.time() + 0.03
    handles = [deadlines.add(when, f"k{i}", fired.append) for i in range(50)]
    assert deadlines.timers == 1, "50 deadlines in one bucket: one loop timer"
    for handle in handles[:49]:
        handle.cancel()
    handles[0].cancel()  # idempotent
    deadlines.add(when + 3 * RESOLUTION, "later", lambda key: later.set_result(None))
    await asyncio.wait_for(later, 5)  # fired after the first bucket's end
    assert fired == ["k49"], "only the one never cancelled fired"


async def test_finished_calls_leave_at_most_one_timer() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, RESOLUTION)
    now = loop.time()
    # calls one after another, and calls spread over many buckets, all ending before deadline
    for i in range(200):
        deadlines.add(now + 10 + i * RESOLUTION / 3, i, lambda key: None).cancel()
    assert len(deadlines) == 0
    assert deadlines.timers <= 1, "only the newest, empty bucket keeps its timer"
    bucket_spread = [deadlines.add(now + 10 + i, i, lambda key: None) for i in range(20)]
    assert deadlines.timers == 20 + 1 or deadlines.timers == 20
    for handle in bucket_spread:
        handle.cancel()
    assert deadlines.timers <= 1
