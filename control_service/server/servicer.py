"""The gRPC edge: validate, open the slot (via the dispatcher), send, relay, close.

This is the only place where ControlError becomes a gRPC status, and the only place a call is
logged: one line when it ends, with its request_id, method, engines, status and duration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog

from control_service.errors import ControlError, to_grpc_status
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from control_service.server import messages
from control_service.server.commands import REQUEST_ID, Commands
from control_service.server.dispatcher import Dispatcher
from control_service.server.metrics import Metrics

log = structlog.get_logger("control_service.calls")

Context: TypeAlias = grpc.aio.ServicerContext
_OK = grpc.StatusCode.OK


def _relay(method: str, build: str) -> Callable[..., Awaitable[None]]:
    """A server-streaming handler: validate -> submit (slot opened, request sent) -> relay each
    event -> end with the operation's status. The same body serves Pause, UpdateWeights, Resume.
    `build` names the Commands method for the RPC's request type (request, time remaining) ->
    Command. A coroutine writing with `context.write` rather than an async generator: gRPC then
    awaits it directly, with no generator layer between an engine's reply and its write."""

    async def handler(self: ControlServicer, request: Any, context: Context) -> None:
        started = time.perf_counter()
        request_id: str = request.request_id
        engines: tuple[str, ...] = ()
        code, message = grpc.StatusCode.CANCELLED, "the caller went away"
        try:
            command = getattr(self._commands, build)(request, context.time_remaining())
            request_id, engines = command.request_id, command.engines
            op, sub = self._dispatcher.submit(command)
            try:
                while True:
                    event = sub.pop()
                    if event is not None:
                        await context.write(messages.event(request_id, *event))
                    elif sub.closed:
                        break
                    else:
                        await sub.wait()
            finally:
                self._dispatcher.unsubscribe(op, sub)
            assert op.outcome is not None
            if op.outcome.code is not _OK:
                raise op.outcome.error()
            code, message = grpc.StatusCode.OK, ""
        except ControlError as err:
            code, message = err.code, err.message
            named = request_id if REQUEST_ID.fullmatch(request_id) else ""  # never echo junk
            await context.abort_with_status(to_grpc_status(err.about(named, engines)))
        finally:
            self._ended(method, request_id, engines, code, message, started)

    handler.__name__ = handler.__qualname__ = method
    return handler


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(
        self, dispatcher: Dispatcher, commands: Commands, metrics: Metrics | None = None
    ) -> None:
        self._dispatcher = dispatcher
        self._commands = commands
        self._metrics = metrics
        # The module's logger is a lazy proxy: each method call through it costs ~0.5 us. Bound
        # here, once the service has configured logging (before it builds the servicer).
        self._log = log.bind()

    def _ended(
        self,
        method: str,
        request_id: str,
        engines: tuple[str, ...],
        code: grpc.StatusCode,
        message: str,
        started: float,
    ) -> None:
        """The one place a call's end is recorded: a metric, and one log line (failures always;
        successes at INFO, and the reply path pays nothing for a line nobody reads)."""
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.call_ended(method, code.name, seconds)
        ok = code is grpc.StatusCode.OK
        if ok and not self._log.is_enabled_for(logging.INFO):
            return
        fields = dict(
            method=method,
            request_id=request_id,
            engine=",".join(engines),
            status=code.name,
            duration_ms=round(seconds * 1000, 3),
        )
        if ok:
            self._log.info("call ended", **fields)
        else:
            self._log.warning("call ended", error=message, **fields)

    Pause = _relay("Pause", "pause")
    UpdateWeights = _relay("UpdateWeights", "update_weights")
    Resume = _relay("Resume", "resume")
    Refit = _relay("Refit", "refit")

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        started = time.perf_counter()
        try:
            engines = self._commands.engines(request.engines)
        except ControlError as err:
            self._ended("GetStatus", "", (), err.code, err.message, started)
            await context.abort_with_status(to_grpc_status(err))
        reports = await self._dispatcher.status(engines)
        response = pb.GetStatusResponse(
            engines=[
                pb.EngineStatus(
                    engine=r.engine,
                    reachable=r.reachable,
                    state=messages.engine_state(r.state),
                    error=r.error,
                    expected_version=r.expected_version,
                )
                for r in reports
            ],
            skewed_engines=[r.engine for r in reports if r.skewed],
        )
        self._ended("GetStatus", "", engines, grpc.StatusCode.OK, "", started)
        return response
