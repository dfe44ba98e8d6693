"""One error type for the whole service: a value that carries its gRPC status.

Everything below the servicer raises or returns `ControlError`; the servicer maps it to gRPC once,
at the edge (`status.abort`). Per-engine failures of a fanned-out call are kept as `failures` so
the final status can name each engine and carry one ErrorInfo per engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True, slots=True)
class EngineFailure:
    """One engine's failed part of a call. `step` is where it failed (a Refit's step, or the
    call's method) and `action` what the service did with it (a names.FailureAction), where
    known: a trainer routing around sick replicas needs both, not only the status.
    `request_id` names the call when it is not the one at hand (GetStatus's flags)."""

    engine: str
    code: grpc.StatusCode
    message: str
    step: str = ""
    action: str = ""
    request_id: str = ""


@dataclass(eq=False)
class ControlError(Exception):
    """A failed call. `reason` is one of REASONS (empty: the default for `code`); `engines` and
    `request_id` name what the failure is about where the raiser knows it, and the edge fills in
    the call's own when it does not (`about`)."""

    code: grpc.StatusCode
    message: str
    failures: tuple[EngineFailure, ...] = field(default=())
    reason: str = ""
    engines: tuple[str, ...] = ()
    request_id: str = ""

    def __post_init__(self) -> None:
        super().__init__(f"{self.code.name}: {self.message}")

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def about(self, request_id: str, engines: tuple[str, ...]) -> ControlError:
        """This error, naming the call's request_id and engines where it named none itself (the
        failed engines first: they are what a multi-engine failure is about)."""
        failed = tuple(dict.fromkeys(f.engine for f in self.failures))
        return dataclasses.replace(
            self,
            request_id=self.request_id or request_id,
            engines=self.engines or failed or engines,
        )


# The reasons a status's ErrorInfo can carry (domain control.v1): the one vocabulary, which the
# README's status table documents. A client decides on `reason`, never on the message text.
REASONS: dict[str, str] = {
    "INVALID_REQUEST_ID": "the request_id is not 1-128 characters of [A-Za-z0-9._:-]",
    "INVALID_REQUEST": "another field of the request is invalid (uri, version, timeout, mode...)",
    "UNKNOWN_ENGINE": "the call names an engine the service does not have (or no longer has)",
    "NO_ENGINES": "the call names no engines and the service has none now (an empty fleet)",
    "REQUEST_ID_REUSED": "the request_id was used for a call with other arguments",
    "ENGINE_BUSY": "another mutation is running on the engine",
    "SLOT_LIMIT": "the service has too many calls in flight",
    "ENGINE_UNREACHABLE": "an engine could not be reached, or was lost during the call",
    "SHUTTING_DOWN": "the service is shutting down",
    "DEADLINE": "the call's deadline passed (metadata ended_by: service or engine)",
    "CALLER_GONE": "every caller went away and the detach grace ran out",
    "ENGINE_ERROR": "an engine reported a failure (one more ErrorInfo per failed engine)",
    "UNAUTHENTICATED": "missing or wrong bearer token",
    "INTERNAL": "a bug in the service",
}
# The reason of a failure whose raiser gave none, by its status code.
_DEFAULT_REASONS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_REQUEST",
    grpc.StatusCode.NOT_FOUND: "UNKNOWN_ENGINE",
    grpc.StatusCode.ALREADY_EXISTS: "REQUEST_ID_REUSED",
    grpc.StatusCode.ABORTED: "ENGINE_BUSY",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "SLOT_LIMIT",
    grpc.StatusCode.UNAVAILABLE: "ENGINE_UNREACHABLE",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DEADLINE",
    grpc.StatusCode.CANCELLED: "CALLER_GONE",
    grpc.StatusCode.UNAUTHENTICATED: "UNAUTHENTICATED",
}
# Said by whichever side ended a call at its deadline, in the message and ErrorInfo.
ENDED_BY_SERVICE = "ended by the service"
ENDED_BY_ENGINE = "ended by the engine"


def reason_of(error: ControlError) -> str:
    """The stable reason for `error`: its own, else ENGINE_ERROR / DEADLINE / ENGINE_UNREACHABLE
    when engines failed, else the default for its code (INTERNAL for any other)."""
    if error.reason:
        return error.reason
    by_code = _DEFAULT_REASONS.get(error.code, "INTERNAL")
    if not error.failures or error.code in (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    ):
        return by_code
    return "ENGINE_ERROR"


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


def shutting_down() -> ControlError:
    return ControlError(
        grpc.StatusCode.UNAVAILABLE, "the service is shutting down", reason="SHUTTING_DOWN"
    )


ERROR_DOMAIN = "control.v1"
_MAX_METADATA_CHARS = 1024

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
    """The rich status sent at the edge. Its first detail is the call's ErrorInfo: the stable
    reason, with the request_id and engines it is about; then one ErrorInfo per failed engine
    (reason: that engine's status code name, metadata: engine, message), as clients read them.
    The whole stays under STATUS_MAX_BYTES: long texts clipped, engines' ErrorInfos past the
    budget left out (the call's own always fits)."""
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    infos = [error_details_pb2.ErrorInfo(
        reason=reason_of(error), domain=ERROR_DOMAIN, metadata=_call_metadata(error)
    )]  # fmt: skip
    for failure in error.failures:
        infos.append(
            error_details_pb2.ErrorInfo(
                reason=failure.code.name,
                domain=ERROR_DOMAIN,
                metadata=_failure_metadata(failure),
            )
        )
    details = []
    size = 0
    for info in infos:
        packed = any_pb2.Any()
        packed.Pack(info)
        size += packed.ByteSize() + 4  # + the field's tag and length
        if size > _DETAILS_MAX_BYTES:
            break
        details.append(packed)
    message = _clip_message(error.message)
    status = status_pb2.Status(code=error.code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def _failure_metadata(failure: EngineFailure) -> dict[str, str]:
    metadata = {
        "engine": failure.engine[:CLIP_CHARS],
        "message": failure.message[: min(_MAX_METADATA_CHARS, _DETAIL_TEXT_CHARS)],
    }
    if failure.step:
        metadata["step"] = failure.step
    if failure.action:
        metadata["action"] = failure.action
    return metadata


def _call_metadata(error: ControlError) -> dict[str, str]:
    metadata = {}
    if error.request_id:
        metadata["request_id"] = error.request_id[:_MAX_METADATA_CHARS]
    if error.engines:
        metadata["engines"] = ",".join(error.engines)[:_MAX_METADATA_CHARS]
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        engine_side = any(f.message.startswith(ENDED_BY_ENGINE) for f in error.failures)
        metadata["ended_by"] = "engine" if engine_side else "service"
    return metadata


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
        # The call's own ErrorInfo names `engines`; only per-engine ones name an `engine`.
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN and "engine" in info.metadata:
            failures.append(
                EngineFailure(
                    info.metadata.get("engine", ""),
                    status_code(info.reason),
                    info.metadata.get("message", ""),
                    info.metadata.get("step", ""),
                    info.metadata.get("action", ""),
                )  # fmt: skip
            )
    return ControlError(code, message or "", tuple(failures))
