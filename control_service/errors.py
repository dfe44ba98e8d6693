"""One error type for the whole service: a value that carries its gRPC status.

Everything below the servicer raises or returns `ControlError`; the servicer maps it to gRPC once,
at the edge (`status.abort`). Per-engine failures of a fanned-out call are kept as `failures` so
the final status can name each engine and carry one ErrorInfo per engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True, slots=True)
class EngineFailure:
    engine: str
    code: grpc.StatusCode
    message: str


@dataclass(eq=False)
class ControlError(Exception):
    code: grpc.StatusCode
    message: str
    failures: tuple[EngineFailure, ...] = field(default=())

    def __post_init__(self) -> None:
        super().__init__(f"{self.code.name}: {self.message}")

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def status_code(name: str) -> grpc.StatusCode:
    """A gRPC status name from the engine protocol ('NOT_FOUND') as a StatusCode."""
    try:
        return grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.UNKNOWN


def invalid(message: str) -> ControlError:
    return ControlError(grpc.StatusCode.INVALID_ARGUMENT, message)


def unavailable(message: str) -> ControlError:
    return ControlError(grpc.StatusCode.UNAVAILABLE, message)


ERROR_DOMAIN = "control.v1"
# The status travels in trailers, and gRPC clients drop a call whose trailers exceed 8-16 KiB
# (8 KiB by default: the call then fails RESOURCE_EXHAUSTED "metadata size exceeds ...", its real
# status lost). A call failing on hundreds of engines must still arrive as itself, so its
# message and its ErrorInfo details are bounded here; every engine's own error is still in its
# EngineError event on the stream.
MAX_STATUS_MESSAGE_BYTES = 2048
MAX_STATUS_DETAILS_BYTES = 3072  # base64 in the trailer: 4 KiB


def to_grpc_status(error: ControlError) -> grpc.Status:
    """The rich status sent at the edge: one google.rpc.ErrorInfo per failed engine, as many
    as fit in MAX_STATUS_DETAILS_BYTES (the message says how many engines it leaves out)."""
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    details: list[any_pb2.Any] = []
    size = 0
    for failure in error.failures:
        info = error_details_pb2.ErrorInfo(
            reason=failure.code.name,
            domain=ERROR_DOMAIN,
            metadata={"engine": failure.engine, "message": failure.message[:1024]},
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        size += packed.ByteSize()
        if size > MAX_STATUS_DETAILS_BYTES:
            break
        details.append(packed)
    message = _bounded(error.message, len(error.failures) - len(details))
    status = status_pb2.Status(code=error.code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def _bounded(message: str, engines_left_out: int) -> str:
    """The message within MAX_STATUS_MESSAGE_BYTES (UTF-8), saying what it leaves out."""
    where = "each engine's error is in its own event on the stream"
    note = f" [{engines_left_out} more failed engines not in the details: {where}]"
    note = note if engines_left_out else ""
    data = message.encode()
    if len(data) + len(note.encode()) <= MAX_STATUS_MESSAGE_BYTES:
        return message + note
    note = " ..." + (note or f" [cut: {where}]")
    return data[: MAX_STATUS_MESSAGE_BYTES - len(note.encode())].decode(errors="ignore") + note


def from_rpc_error(err: grpc.RpcError) -> ControlError:
    """A client's view of a failed call: code, message and each engine's failure."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    message = err.details() if callable(getattr(err, "details", None)) else str(err)
    failures: list[EngineFailure] = []
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            failures.append(
                EngineFailure(
                    info.metadata.get("engine", ""),
                    status_code(info.reason),
                    info.metadata.get("message", ""),
                )  # fmt: skip
            )
    return ControlError(code, message or "", tuple(failures))
