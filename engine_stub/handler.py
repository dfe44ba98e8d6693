"""The simulated engine as a control_service.engine handler, with the knobs that act on operations.

The knobs that act on replies (silent, garbage, reply_delay) belong to server.py's sender; the
ones here decide what an operation does: `instant` answers at once (a plain return, which the
library sends inline: the benchmark's peer costs what an echo costs), `fail_next` fails the next
mutation (of one method, if it names one) with a given status, `hang_next` makes the next
mutation of a method hang until it is cancelled or its timeout_s runs out (a stuck load).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from control_service.engine import Capabilities, Done, EngineError, EngineState, Operation
from control_service.protocol import names

from .engine import Engine

log = logging.getLogger("engine_stub")


@dataclass
class Knobs:
    """Test behaviours, set by flags at start-up and by JSON lines on stdin at run time."""

    reply_delay: float = 0.0
    instant: bool = False
    silent: bool = False
    garbage: bool = False
    fail_next: tuple[str, str] | None = None  # (code, message) for the next mutation
    fail_method: str | None = None  # ...of this method only (None: whichever comes)
    hang_next: str | None = None  # the next mutation of this method hangs until cancelled


class StubHandler:
    """engine.Engine behind the EngineHandler interface, subject to the operation knobs."""

    CAPABILITIES = Capabilities()  # every pause mode, cancel, progress (and stage: the library)

    def __init__(self, engine: Engine, knobs: Knobs) -> None:
        self.engine = engine
        self.knobs = knobs
        engine.set_simulating(not knobs.instant)

    def set_instant(self, on: bool) -> None:
        self.knobs.instant = on
        self.engine.set_simulating(not on)

    def capabilities(self) -> Capabilities:
        return self.CAPABILITIES

    def status(self) -> EngineState:
        return self.engine.state()

    def pause(self, op: Operation, mode: str, clear_cache: bool) -> Done | Awaitable[Done]:
        if (knocked := self._knocked(op)) is not None:
            return knocked
        if self.knobs.instant:
            return self.engine.instant("pause")
        return self.engine.pause(op, mode, clear_cache)

    def update_weights(self, op: Operation, uri: str, version: str) -> Done | Awaitable[Done]:
        if (knocked := self._knocked(op)) is not None:
            return knocked
        if self.knobs.instant:
            return self.engine.instant(names.UPDATE_WEIGHTS, version)
        return self.engine.update_weights(op, uri, version)

    def stage_weights(self, op: Operation, uri: str, version: str) -> Done | Awaitable[Done]:
        if (knocked := self._knocked(op)) is not None:
            return knocked
        return self.engine.stage_weights(op, uri, version)

    def commit_staged(self, op: Operation, version: str) -> Done | Awaitable[Done]:
        if (knocked := self._knocked(op)) is not None:
            return knocked
        return self.engine.commit_staged(version)

    def resume(self, op: Operation) -> Done | Awaitable[Done]:
        if (knocked := self._knocked(op)) is not None:
            return knocked
        if self.knobs.instant:
            return self.engine.instant("resume")
        return self.engine.resume()

    def _knocked(self, op: Operation) -> Awaitable[Done] | None:
        """fail_next raises its error; hang_next returns the hang; else None."""
        knobs = self.knobs
        if knobs.fail_next is not None and knobs.fail_method in (None, op.method):
            code, message = knobs.fail_next
            knobs.fail_next = None
            raise EngineError(code, message)
        if knobs.hang_next == op.method:
            knobs.hang_next = None
            log.info("hang_next: %s %s hangs until cancelled", op.method, op.request_id)
            return _hang()
        return None


async def _hang() -> Done:
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable: the future is never set")
