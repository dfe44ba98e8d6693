"""The one mutation in progress, and the replies that end an operation without a `Done`.

Apart from the server because these are the nouns its mutation bookkeeping works on: the
`Running` record (request, peers, task, timer, how it ended), the error replies for a failure,
a cancel or a timeout and a reused request_id, and the two small adapters between a handler's
answer and a task (`as_awaitable`, and `discard` for a coroutine that will never run).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from control_service.protocol import wire

from .handler import Done, EngineError, Operation, clip

if TYPE_CHECKING:
    from .tracing import MutationSpan

log = logging.getLogger("control_service.engine")


@dataclass(eq=False, slots=True)
class Running:
    """The one mutation in progress: its request, the peers waiting on it, and its task."""

    request: wire.Request
    peers: list[bytes]
    op: Operation | None = None
    task: asyncio.Task[None] | None = None
    awaitable: Awaitable[Done] | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    finished: bool = False
    span: MutationSpan | None = None  # when traced (tracing.py): ended with the reply


def failure(request: wire.Request, err: Exception) -> wire.Reply:
    if isinstance(err, EngineError):
        return wire.error(request.request_id, err.code, err.message)
    log.error("%s %s failed", request.method, request.request_id, exc_info=err)
    return wire.error(request.request_id, "INTERNAL", clip(f"{type(err).__name__}: {err}"))


def stopped(run: Running) -> wire.Reply:
    request = run.request
    if run.timed_out:
        message = f"{request.method} not done within {request.timeout_s:g}s"
        return wire.error(request.request_id, "DEADLINE_EXCEEDED", message)
    return wire.error(request.request_id, "CANCELLED", f"{request.method} cancelled")


def other_call(request: wire.Request) -> wire.Reply:
    message = (
        f"request_id {request.request_id} was already used for another call; "
        "use a new request_id for a new call"
    )
    return wire.error(request.request_id, "ALREADY_EXISTS", message)


def as_awaitable(answer: Done | Awaitable[Done]) -> Awaitable[Done]:
    if isinstance(answer, Done):

        async def ready() -> Done:
            return answer

        return ready()
    return answer


def discard(awaitable: Awaitable[Any]) -> None:
    """Close a coroutine that will never run, so it is not reported as never awaited."""
    if inspect.iscoroutine(awaitable) and inspect.getcoroutinestate(awaitable) == "CORO_CREATED":
        awaitable.close()
