"""Where the service's CPU goes, by phase of a call: thread CPU time measured around our code.

`bench._service --account` builds its ControlServer with the factories here (`FACTORIES`):
subclasses of the engine link, dispatcher and servicer whose overrides of the public steps of a
call add up the thread CPU time (`time.thread_time_ns`, user + system of the event loop's
thread) spent inside each. Nothing is patched: they go in through the server's own seams, so a
rename fails loudly at import. Why not a sampling profiler: on this VM py-spy attributes time to
whichever frame is on the stack when the process is stopped, which over-weights system calls and
can't separate our Python from gRPC's and ZMQ's C; these overrides measure our phases directly,
in the real server, under real load. Each costs ~0.5 us (two clock reads); nested phases are
listed under their parent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.server.commands import Commands
from control_service.server.dispatcher import Dispatcher
from control_service.server.engine_link import EngineLink
from control_service.server.metrics import Metrics
from control_service.server.operations import Command, Event, Operation, Subscriber
from control_service.server.servicer import ControlServicer

VALIDATE = "validate: request -> Command"
SUBMIT = "submit: admit, slot, timer, send"
SEND = "zmq send"
REPLY = "reply: zmq recv .. op finished"
DELIVER = "decode, deliver, finish"
MESSAGE = "build ControlEvent"
UNSUBSCRIBE = "unsubscribe"
END = "end: metrics, log line"
# (name shown, parent or ""), in the order shown
PHASES: list[tuple[str, str]] = [
    (VALIDATE, ""),
    (SUBMIT, ""),
    (SEND, SUBMIT),
    (REPLY, ""),
    (DELIVER, REPLY),
    (MESSAGE, ""),
    (UNSUBSCRIBE, ""),
    (END, ""),
]

spent_ns: dict[str, int] = {}
_T = TypeVar("_T")
_clock = time.thread_time_ns


def _timed(name: str, func: Callable[..., _T], *args: Any) -> _T:
    started = _clock()
    try:
        return func(*args)
    finally:
        spent_ns[name] = spent_ns.get(name, 0) + _clock() - started


class TimedLink(EngineLink):
    def transmit(self, body: bytes) -> None:
        _timed(SEND, super().transmit, body)

    def drain(self) -> None:
        _timed(REPLY, super().drain)

    def receive(self, frames: list[bytes]) -> None:
        _timed(DELIVER, super().receive, frames)


class TimedDispatcher(Dispatcher):
    def submit(self, command: Command) -> tuple[Operation, Subscriber]:
        return _timed(SUBMIT, super().submit, command)

    def unsubscribe(self, op: Operation, sub: Subscriber) -> None:
        _timed(UNSUBSCRIBE, super().unsubscribe, op, sub)


class TimedCommands(Commands):
    def pause(self, req: pb.PauseRequest, time_remaining: float | None) -> Command:
        return _timed(VALIDATE, super().pause, req, time_remaining)


class TimedServicer(ControlServicer):
    def __init__(self, dispatcher: Dispatcher, commands: Commands, metrics: Metrics) -> None:
        super().__init__(dispatcher, TimedCommands(commands.config), metrics)

    def event_message(self, request_id: str, event: Event) -> pb.ControlEvent:
        return _timed(MESSAGE, super().event_message, request_id, event)

    def call_ended(
        self,
        method: str,
        request_id: str,
        engines: tuple[str, ...],
        code: grpc.StatusCode,
        message: str,
        started: float,
    ) -> None:
        _timed(END, super().call_ended, method, request_id, engines, code, message, started)


FACTORIES: dict[str, Any] = {
    "link_factory": TimedLink,
    "dispatcher_factory": TimedDispatcher,
    "servicer_factory": TimedServicer,
}


def snapshot() -> dict[str, int]:
    return dict(spent_ns)
