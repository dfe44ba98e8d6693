"""Engine replies as gRPC messages: the one place that builds ControlEvent and EngineState.

wire.decode_reply has already checked every field's type and range, so these constructors
cannot fail on what an engine sent.
"""

from __future__ import annotations

from typing import Any

from control_service import wire
from control_service.gen.control.v1 import control_pb2 as pb


def event(
    request_id: str, engine: str, seq: int, reply: wire.Reply, step: str = ""
) -> pb.ControlEvent:
    e = _event(request_id, engine, seq, reply)
    if step:
        e.step = step
    return e


def _event(request_id: str, engine: str, seq: int, reply: wire.Reply) -> pb.ControlEvent:
    d = reply.data
    kind = reply.kind
    if kind == wire.RESULT:
        result = pb.Result(
            state=pb.EngineState(**d["state"]),
            message=d["message"],
            aborted=d["aborted"],
            drained=d["drained"],
            bytes_loaded=d["bytes_loaded"],
        )
        return pb.ControlEvent(request_id=request_id, engine=engine, seq=seq, result=result)
    if kind == wire.PROGRESS:
        return pb.ControlEvent(
            request_id=request_id, engine=engine, seq=seq, progress=pb.Progress(**d)
        )
    if kind == wire.ACCEPTED:
        return pb.ControlEvent(
            request_id=request_id, engine=engine, seq=seq, accepted=pb.Accepted(**d)
        )
    return pb.ControlEvent(request_id=request_id, engine=engine, seq=seq, error=pb.EngineError(**d))


def engine_state(state: dict[str, Any] | None) -> pb.EngineState | None:
    return None if state is None else pb.EngineState(**state)
