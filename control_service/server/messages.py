"""Engine replies as gRPC messages: the one place that builds ControlEvent and EngineState.

wire.decode_reply has already checked every field's type and range, so these constructors
cannot fail on what an engine sent.
"""

from __future__ import annotations

from typing import Any

from control_service.errors import EngineFailure
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import wire
from control_service.protocol.proto_enums import FAILURE_ACTION_VALUES, PAUSE_MODE_VALUES
from control_service.server.operations import Event


def event(request_id: str, event: Event) -> pb.ControlEvent:
    """The ControlEvent a caller receives for one engine reply."""
    reply = event.reply
    # Each field accepts a mapping (see the .pyi): wire.decode_reply has shaped `data` to exactly
    # that message's fields, so one constructor call builds the submessage too (half the cost
    # of building it apart, measured), and an unknown key would still raise.
    submessage: dict[str, Any] = {_FIELD[reply.kind]: reply.data}
    message = pb.ControlEvent(
        request_id=request_id, engine=event.engine, seq=event.seq, **submessage
    )
    if event.step:
        message.step = event.step
    if event.failure is not None:
        message.result.failure.CopyFrom(engine_failure(event.failure))
    return message


def engine_failure(failure: EngineFailure) -> pb.EngineFailure:
    """An engine's failure as the proto says it: step, its own status, what was done."""
    return pb.EngineFailure(
        step=failure.step,
        code=failure.code.name,
        message=failure.message,
        action=FAILURE_ACTION_VALUES.get(failure.action, pb.FAILURE_ACTION_UNSPECIFIED),
        request_id=failure.request_id,
    )


# The ControlEvent field each reply kind fills.
_FIELD = {
    wire.RESULT: "result",
    wire.PROGRESS: "progress",
    wire.ACCEPTED: "accepted",
    wire.ERROR: "error",
}


def engine_state(state: dict[str, Any] | None) -> pb.EngineState | None:
    return None if state is None else pb.EngineState(**state)


_FIXED = frozenset({"pause_modes", "cancel", "progress"})


def engine_capabilities(caps: dict[str, Any] | None) -> pb.EngineCapabilities | None:
    """wire's checked capabilities (pause modes it knows, booleans) as the proto message."""
    if caps is None:
        return None
    return pb.EngineCapabilities(
        pause_modes=[PAUSE_MODE_VALUES[mode] for mode in caps["pause_modes"]],
        cancel=caps["cancel"],
        progress=caps["progress"],
        flags={k: v for k, v in caps.items() if k not in _FIXED},
    )


_SOURCES: dict[str, pb.EngineSource] = {
    "flag": pb.ENGINE_SOURCE_FLAG,
    "file": pb.ENGINE_SOURCE_FILE,
    "dns": pb.ENGINE_SOURCE_DNS,
}


def engine_source(source: str | None) -> pb.EngineSource:
    """Where the service learned of an engine (membership.Source), as the proto's enum."""
    return _SOURCES.get(source or "", pb.ENGINE_SOURCE_UNSPECIFIED)
