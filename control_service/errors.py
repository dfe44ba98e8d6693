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

# The whole status travels in HTTP/2 trailers, and clients refuse headers over 16 KiB (grpc's
# default) with RESOURCE_EXHAUSTED, which would hide the real status. Message and details are
# each bounded so that, as sent (grpc-message percent-encoded, details base64), the status stays
# under STATUS_MAX_BYTES however long the texts an engine or a caller supplied.
# The message is sent twice: in grpc-message (percent-encoded, up to 3 bytes per UTF-8 byte) and
# inside grpc-status-details-bin (the serialized google.rpc.Status, base64: 4 bytes per 3), so at
# worst 2,400 + 4/3 * (1,500 + 2,048 + framing) < 7,200 bytes.
STATUS_MAX_BYTES = 8192
_MESSAGE_MAX_SENT = 2400
_MESSAGE_MAX_UTF8 = 1500
_DETAILS_MAX_BYTES = 2048
_DETAIL_TEXT_CHARS = 512  # each engine's message inside its ErrorInfo
CLIP_CHARS = 64  # a caller-supplied value echoed in a message


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """A value to echo in a message or log line, shortened to `limit` characters (repr-quoted
    so control characters are visible)."""
    text = value if isinstance(value, str) else str(value)
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown) if isinstance(value, str) else shown


def _sent_bytes(text: str) -> int:
    """grpc-message's size on the wire: printable ASCII but '%' as is, every other byte %XX."""
    return sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in text.encode())


def _fits(text: str, margin: int = 0) -> bool:
    return (
        _sent_bytes(text) + margin <= _MESSAGE_MAX_SENT
        and len(text.encode()) + margin <= _MESSAGE_MAX_UTF8
    )


def _clip_message(text: str) -> str:
    if _fits(text):
        return text
    low, high = 0, min(len(text), _MESSAGE_MAX_UTF8)  # the longest prefix that fits + marker
    while low < high:
        mid = (low + high + 1) // 2
        if _fits(text[:mid], margin=40):
            low = mid
        else:
            high = mid - 1
    return f"{text[:low]}... ({len(text) - low} characters clipped)"


def to_grpc_status(error: ControlError) -> grpc.Status:
    """The rich status sent at the edge: one google.rpc.ErrorInfo per failed engine, the whole
    under STATUS_MAX_BYTES (long texts clipped, ErrorInfos past the budget left out)."""
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    details = []
    size = 0
    for failure in error.failures:
        info = error_details_pb2.ErrorInfo(
            reason=failure.code.name,
            domain=ERROR_DOMAIN,
            metadata={
                "engine": failure.engine[:CLIP_CHARS],
                "message": failure.message[:_DETAIL_TEXT_CHARS],
            },
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        size += packed.ByteSize() + 4  # + the field's tag and length
        if size > _DETAILS_MAX_BYTES:
            break
        details.append(packed)
    message = _clip_message(error.message)
    status = status_pb2.Status(code=error.code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


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
