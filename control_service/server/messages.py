"""Engine replies as gRPC messages: the one place that builds ControlEvent and EngineState.

wire.decode_reply has already checked every field's type and range, so these constructors
cannot fail on what an engine sent.
"""

from __future__ import annotations

from typing import Any

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import wire


def event(
    request_id: str, engine: str, seq: int, reply: wire.Reply, step: str = ""
) -> pb.ControlEvent:
    e = _event(request_id, engine, seq, reply)
    if step:
        e.step = step
    return e


# The ControlEvent field each reply kind fills. wire.decode_reply has shaped `data` to exactly
# that message's fields, so it initialises the submessage as a dict: one constructor call
# instead of three (half the cost, measured), and an unknown key would still raise.
_FIELD = {
    wire.RESULT: "result",
    wire.PROGRESS: "progress",
    wire.ACCEPTED: "accepted",
    wire.ERROR: "error",
}


def _event(request_id: str, engine: str, seq: int, reply: wire.Reply) -> pb.ControlEvent:
    submessage = {_FIELD[reply.kind]: reply.data}  # each field accepts a mapping (see the .pyi)
    return pb.ControlEvent(request_id=request_id, engine=engine, seq=seq, **submessage)  # type: ignore[arg-type]


def engine_state(state: dict[str, Any] | None) -> pb.EngineState | None:
    return None if state is None else pb.EngineState(**state)


_MODES = {"abort": pb.PAUSE_MODE_ABORT, "wait": pb.PAUSE_MODE_WAIT, "keep": pb.PAUSE_MODE_KEEP}
_FIXED = frozenset({"pause_modes", "cancel", "progress"})


def engine_capabilities(caps: dict[str, Any] | None) -> pb.EngineCapabilities | None:
    """wire's checked capabilities (pause modes it knows, booleans) as the proto message."""
    if caps is None:
        return None
    return pb.EngineCapabilities(
        pause_modes=[_MODES[mode] for mode in caps["pause_modes"]],
        cancel=caps["cancel"],
        progress=caps["progress"],
        flags={k: v for k, v in caps.items() if k not in _FIXED},
    )
