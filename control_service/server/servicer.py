"""The gRPC edge: validate, open the slot (via the dispatcher), send, relay, close.

This is the only place where ControlError becomes a gRPC status, and the only place a call is
logged: one line when it ends, with its request_id, method, engines, status and duration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeAlias, TypeVar

import grpc
import structlog

from control_service.errors import ControlError, to_grpc_status
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from control_service.log import few_names
from control_service.protocol import names
from control_service.server import messages
from control_service.server.commands import Commands
from control_service.server.dispatcher import Dispatcher
from control_service.server.metrics import Metrics
from control_service.server.operations import Command, Event

log = structlog.get_logger("control_service.calls")

Context: TypeAlias = grpc.aio.ServicerContext
MutationRequest = TypeVar(
    "MutationRequest",
    pb.PauseRequest,
    pb.UpdateWeightsRequest,
    pb.StageWeightsRequest,
    pb.ResumeRequest,
    pb.RefitRequest,
)
# Validates one RPC's request, given the call's time remaining: Commands.pause, .refit, ...
Build: TypeAlias = Callable[[MutationRequest, float | None], Command]
_OK = grpc.StatusCode.OK


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

    async def Pause(self, request: pb.PauseRequest, context: Context) -> None:
        await self.relay("Pause", self._commands.pause, request, context)

    async def UpdateWeights(self, request: pb.UpdateWeightsRequest, context: Context) -> None:
        await self.relay("UpdateWeights", self._commands.update_weights, request, context)

    async def StageWeights(self, request: pb.StageWeightsRequest, context: Context) -> None:
        await self.relay("StageWeights", self._commands.stage_weights, request, context)

    async def Resume(self, request: pb.ResumeRequest, context: Context) -> None:
        await self.relay("Resume", self._commands.resume, request, context)

    async def Refit(self, request: pb.RefitRequest, context: Context) -> None:
        await self.relay("Refit", self._commands.refit, request, context)

    async def relay(
        self,
        method: str,
        build: Build[MutationRequest],
        request: MutationRequest,
        context: Context,
    ) -> None:
        """The body of every mutating RPC: validate -> submit (slot opened, request sent) ->
        write each event -> end with the operation's status. It writes with `context.write`
        instead of being an async generator: gRPC then awaits it directly, with no generator
        layer between an engine's reply and its write."""
        started = time.perf_counter()
        request_id = request.request_id
        engines: tuple[str, ...] = ()
        code, message = grpc.StatusCode.CANCELLED, "the caller went away"
        try:
            command = build(request, context.time_remaining())
            request_id, engines = command.request_id, command.engines
            op, sub = self._dispatcher.submit(command)
            try:
                while True:
                    event = sub.pop()
                    if event is not None:
                        await context.write(self.event_message(request_id, event))
                    elif sub.closed:
                        break
                    else:
                        await sub.wait()
            finally:
                self._dispatcher.unsubscribe(op, sub)
            assert op.outcome is not None
            if op.outcome.code is not _OK:
                raise op.outcome.error()
            code, message = _OK, op.outcome.message  # non-empty: failures it tolerated
        except ControlError as err:
            code, message = err.code, err.message
            named = request_id if names.is_request_id(request_id) else ""  # never echo junk
            await context.abort_with_status(to_grpc_status(err.about(named, engines)))
        finally:
            self.call_ended(method, request_id, engines, code, message, started)

    def event_message(self, request_id: str, event: Event) -> pb.ControlEvent:
        """The ControlEvent a caller is sent for one event (a seam: the benchmark times it)."""
        return messages.event(request_id, event)

    def call_ended(
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
        if self._dispatcher.tracing is not None:
            self._dispatcher.tracing.call_ended(request_id, engines, code, message)
        ok = code is grpc.StatusCode.OK and not message
        if ok and not self._log.is_enabled_for(logging.INFO):
            return
        fields = dict(
            method=method,
            request_id=request_id,
            engine=few_names(engines),
            status=code.name,
            duration_ms=round(seconds * 1000, 3),
        )
        if ok:
            self._log.info("call ended", **fields)
        else:  # failed, or OK with failed engines it tolerated (the message names them)
            self._log.warning("call ended", error=message[:1024], **fields)

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        started = time.perf_counter()
        try:
            engines = self._commands.status_engines(request.engines)
        except ControlError as err:
            self.call_ended("GetStatus", "", (), err.code, err.message, started)
            await context.abort_with_status(to_grpc_status(err))
        membership = self._commands.membership  # as the call starts: engines may leave meanwhile
        leaving, sources = frozenset(membership.leaving), dict(membership.sources)
        generation = membership.generation
        reports = await self._dispatcher.status(engines)
        response = pb.GetStatusResponse(
            engines=[
                pb.EngineStatus(
                    engine=r.engine,
                    reachable=r.reachable,
                    state=messages.engine_state(r.state),
                    error=r.error,
                    expected_version=r.expected_version,
                    capabilities=messages.engine_capabilities(r.capabilities),
                    failure=None if r.failure is None else messages.engine_failure(r.failure),
                    source=messages.engine_source(sources.get(r.engine)),
                    leaving=r.engine in leaving,
                )
                for r in reports
            ],
            skewed_engines=[r.engine for r in reports if r.skewed],
            membership_generation=generation,
        )
        self.call_ended("GetStatus", "", engines, grpc.StatusCode.OK, "", started)
        return response
