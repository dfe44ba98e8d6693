"""Where the service's CPU goes, by phase of a call: thread CPU time measured around our code.

Installed in the service process by `bench._service --account` before the server is built, it
wraps a few methods at class level (no source is edited) and adds up the thread CPU time
(`time.thread_time_ns`, user + system of the event loop's thread) spent inside each. Why not a
sampling profiler: on this VM py-spy attributes time to whichever frame is on the stack when
the process is stopped, which over-weights system calls and can't separate our Python from
gRPC's and ZMQ's C; these wrappers measure our phases directly, in the real server, under real
load. Each wrapper costs ~0.5 us (two clock reads); nested phases are listed under their parent.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

# (name shown, parent or "", owner object, attribute)
PHASES: list[tuple[str, str, str, str]] = [
    ("validate: request -> Command", "", "control_service.server.commands:Commands", "pause"),
    ("submit: admit, slot, timer, send", "", "control_service.server.dispatcher:Dispatcher", "submit"),
    ("zmq send", "submit: admit, slot, timer, send", "control_service.server.engine_link:EngineLink",
     "_transmit"),
    ("reply: zmq recv .. op finished", "", "control_service.server.engine_link:EngineLink", "_drain"),
    ("decode, deliver, finish", "reply: zmq recv .. op finished",
     "control_service.server.engine_link:EngineLink", "_on_frames"),
    ("build ControlEvent", "", "control_service.server.messages:", "event"),
    ("unsubscribe", "", "control_service.server.dispatcher:Dispatcher", "unsubscribe"),
    ("end: metrics, log line", "", "control_service.server.servicer:ControlServicer", "_ended"),
]  # fmt: skip

spent_ns: dict[str, int] = {}


def _wrap(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.thread_time_ns

    @functools.wraps(func)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return func(*args, **kwargs)
        finally:
            spent_ns[name] = spent_ns.get(name, 0) + clock() - started

    return timed


def install() -> None:
    """Wrap every phase. Call before the ControlServer is built (links register `_drain`
    with the event loop when they start; the servicer module looks up `messages.event`)."""
    import importlib

    for name, _, owner, attribute in PHASES:
        module_name, _, class_name = owner.partition(":")
        module = importlib.import_module(module_name)
        target = getattr(module, class_name) if class_name else module
        setattr(target, attribute, _wrap(name, getattr(target, attribute)))


def snapshot() -> dict[str, int]:
    return dict(spent_ns)
