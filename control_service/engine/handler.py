"""What an engine author implements, and the values that cross between the library and it.

The library (server.py) owns every duty of the protocol: frames, one mutation at a time, status
never queued, cancel, timeout_s, progress, repeats of a request_id. A handler owns only what the
engine does. It answers in values (`Done`, `EngineState`) and fails with `EngineError`, so it never
builds a wire reply and cannot break the protocol's order (one terminal reply per request).

Each operation method may be an `async def` (the usual case: it runs as a task, `status` and
`cancel` are read while it runs) or a plain `def` that returns its `Done` at once, which the
library answers inline, before it reads the next frame, without holding the mutation slot across
frames: that is how an instant engine (the benchmark's peer) stays as cheap as a bare echo.
Cancellation, by `cancel` or by `timeout_s`, arrives in the handler as `asyncio.CancelledError`
at whatever it awaits: roll back in `except`/`finally`, and let it propagate.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from control_service.protocol import wire


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this engine supports; reported in every `status` result (wire: `capabilities`).

    `flags` holds further yes/no capabilities by name (e.g. {"stage": True}) so that a new one
    needs no new field here. The defaults are what an engine that reports nothing is taken to
    support.
    """

    pause_modes: frozenset[str] = wire.PAUSE_MODES
    cancel: bool = True
    progress: bool = True
    flags: tuple[tuple[str, bool], ...] = ()

    def to_wire(self) -> dict[str, object]:
        return wire.capabilities(
            sorted(self.pause_modes), cancel=self.cancel, progress=self.progress, **dict(self.flags)
        )


# EngineState and Done are values nothing mutates; not frozen because an instant engine builds
# one of each per call, and a frozen __init__ costs 4x (as wire.Request).
@dataclass(slots=True)
class EngineState:
    """The engine's state as `status` and every `result` report it.

    `message` is a one-line human summary, sent as a status result's message.
    """

    paused: bool
    weight_version: str = ""
    in_flight: int = 0
    weight_digest: str = ""
    message: str = ""

    def to_wire(self) -> dict[str, object]:
        return wire.state(self.paused, self.weight_version, self.in_flight, self.weight_digest)


@dataclass(slots=True)
class Done:
    """A mutation's success. Without `state`, the library asks `status()` for the final one."""

    message: str = ""
    aborted: int = 0
    drained: int = 0
    bytes_loaded: int = 0
    state: EngineState | None = None


class EngineError(Exception):
    """A mutation's failure with a precise gRPC status name (`wire.ERROR_CODES`), e.g.
    EngineError("FAILED_PRECONDITION", "update_weights needs a paused engine")."""

    def __init__(self, code: str, message: str) -> None:
        if code not in wire.ERROR_CODES:
            raise ValueError(f"{code!r} is not a gRPC status name other than OK")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = clip(message)


@dataclass(slots=True)
class Operation:
    """One running mutation as its handler sees it: who it is, how long it has, how to report.

    `deadline` is on the `time.monotonic()` clock (so a worker thread can check it too); the
    library cancels the operation when it passes. `accepted` and `progress` go to every peer
    attached to the operation (a retry with the same request_id attaches); call them on the
    event loop's thread (from a worker thread, through `loop.call_soon_threadsafe`).
    """

    request_id: str
    method: str
    deadline: float
    _send: Callable[[wire.Reply], None] = field(repr=False)

    def time_remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def accepted(self, message: str = "") -> None:
        self._send(wire.accepted(self.request_id, clip(message)))

    def progress(self, stage: str, done: int, total: int, message: str = "") -> None:
        self._send(wire.progress(self.request_id, clip(stage), done, total, clip(message)))


class EngineHandler(Protocol):
    """What an engine implements. See the module docstring for async vs plain methods."""

    def capabilities(self) -> Capabilities: ...

    def status(self) -> EngineState | Awaitable[EngineState]:
        """Quick and side-effect free: it runs beside a running mutation, never behind it."""
        ...

    def pause(self, op: Operation, mode: str, clear_cache: bool) -> Done | Awaitable[Done]:
        """Stop serving: `mode` is one of capabilities().pause_modes (the library checks)."""
        ...

    def update_weights(self, op: Operation, uri: str, version: str) -> Done | Awaitable[Done]:
        """Load weights from `uri` (non-empty, checked) and report `version` (non-empty)."""
        ...

    def resume(self, op: Operation) -> Done | Awaitable[Done]: ...


MAX_MESSAGE_CHARS = 1000  # well under wire.MAX_TEXT_CHARS, so a long OS error never breaks a reply


def clip(text: str) -> str:
    """Text ends up in fields the service bounds by length: keep every message well inside."""
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."
