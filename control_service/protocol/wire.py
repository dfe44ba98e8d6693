"""The engine protocol's encoding: the one place that turns frames into values and back.

Both sides import this module (the service's engine link and engine_stub), so the two can never
disagree about a field. Bodies are UTF-8 JSON (never pickle) and every decode is bounded and
validated here, so that code past this point can trust what it holds: a frame that is too large,
not JSON, of an unknown version or kind, or with a field of the wrong type raises `WireError`,
and the caller drops that one frame and carries on. See docs/engine-protocol.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeGuard

from control_service.protocol import names as _names

# Re-exported: an engine reads the protocol's words here, beside the codec that checks them.
from control_service.protocol.names import ENGINE_METHODS as METHODS
from control_service.protocol.names import ERROR_CODES as ERROR_CODES
from control_service.protocol.tracing import TraceContext, TraceContextError, check_trace

log = logging.getLogger("control_service.protocol")

PROTOCOL_VERSION: Final = 1
MAX_FRAME_BYTES: Final = 1 << 20
# Above a caller's 128 (names.MAX_REQUEST_ID_CHARS): the service's own ids add a suffix to it
# (a refit step's "<id>/policy-resume-2").
MAX_WIRE_ID_CHARS: Final = 256
MAX_TEXT_CHARS: Final = 4096

# Frozen sets of the shared words, for membership tests on the decode path.
MUTATIONS: Final = frozenset(_names.MUTATIONS)
PAUSE_MODES: Final = frozenset(_names.PAUSE_MODES)
ACCEPTED: Final = "accepted"
PROGRESS: Final = "progress"
RESULT: Final = "result"
ERROR: Final = "error"
KINDS: Final = frozenset({ACCEPTED, PROGRESS, RESULT, ERROR})
TERMINAL_KINDS: Final = frozenset({RESULT, ERROR})

# The optional `capabilities` of a status result: what the engine supports. An engine that omits
# it supports everything below (DEFAULT_CAPABILITIES); unknown yes/no flags are kept, by name.
MAX_CAPABILITIES: Final = 32
MAX_CAPABILITY_NAME_CHARS: Final = 64
DEFAULT_PAUSE_MODES: Final = tuple(sorted(_names.PAUSE_MODES))  # sorted, as decoded
DEFAULT_CAPABILITIES: Final = MappingProxyType(
    {"pause_modes": DEFAULT_PAUSE_MODES, "cancel": True, "progress": True}
)

_UINT32: Final = (1 << 32) - 1
_UINT64: Final = (1 << 64) - 1


def _stdlib_codec() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """The standard library's JSON, held to what orjson accepts: a frame means the same thing
    whichever is installed. orjson refuses NaN/Infinity and numbers that overflow a double, reads
    integers beyond 64 bits as floats, and refuses deep nesting (the standard library would
    raise RecursionError, which is not a ValueError)."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    decoder = json.JSONDecoder(
        parse_constant=_no_constant, parse_int=_int_as_orjson, parse_float=_finite_float
    ).decode

    def decode(body: bytes) -> Any:
        try:
            return decoder(body.decode("utf-8"))
        except RecursionError:
            raise ValueError("nesting too deep") from None

    return (lambda obj: encoder(obj).encode()), decode


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int_as_orjson(text: str) -> int | float:
    value = int(text)
    return value if -(1 << 63) <= value <= (1 << 64) - 1 else _finite_float(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} overflows a double")
    return value


try:  # orjson (the `fast` extra) is ~5x quicker on the reply path; same JSON on the wire
    import orjson

    _encode: Callable[[Any], bytes] = orjson.dumps
    _decode: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    _encode, _decode = _stdlib_codec()


class WireError(ValueError):
    """A frame that breaks the protocol. `request_id` is set when the frame named one."""

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


# Request and Reply are values that nothing mutates; they are not frozen dataclasses because one is
# built for every frame on the hot path, and a frozen __init__ costs 4x (410 vs 100 ns measured).
@dataclass(slots=True)
class Request:
    """Service -> engine. `timeout_s` is what is left of the call's effective deadline."""

    request_id: str
    method: str
    args: dict[str, Any]
    timeout_s: float
    # The caller's W3C trace context (optional `trace`: protocol/tracing.py); None without one.
    trace: TraceContext | None = None


@dataclass(slots=True)
class Reply:
    """Engine -> service. Any number of accepted/progress, then one result or error."""

    request_id: str
    kind: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


# ---------------------------------------------------------------------------------- requests


def encode_request(request: Request) -> bytes:
    if request.trace is not None:
        return _frame(request.request_id, method=request.method, args=request.args,
                      timeout_s=request.timeout_s, trace=request.trace.to_wire())  # fmt: skip
    return _frame(
        request.request_id, method=request.method, args=request.args, timeout_s=request.timeout_s
    )


def decode_request(body: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Request:
    """The engine side's decoder."""
    obj = _load(body, max_bytes)
    request_id = _request_id(obj)
    method = obj.get("method")
    if not isinstance(method, str) or method not in METHODS:  # a list is unhashable: check type
        raise WireError(f"unknown method {method!r}", request_id)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise WireError("args must be an object", request_id)
    timeout_s = obj.get("timeout_s")
    if not _is_number(timeout_s) or not timeout_s > 0:
        raise WireError("timeout_s must be a number > 0", request_id)
    trace = obj.get("trace")
    return Request(request_id, method, args, float(timeout_s),
                   None if trace is None else _trace(trace, request_id))  # fmt: skip


def _trace(value: object, request_id: str) -> TraceContext | None:
    """The optional trace context. One that breaks its rules is dropped, said in one line: a
    trace is never a reason to fail the call it describes."""
    try:
        return check_trace(value)
    except TraceContextError as err:
        log.warning("request %r: trace context dropped: %s", request_id, err)
        return None


# ----------------------------------------------------------------------------------- replies


def encode_reply(reply: Reply) -> bytes:
    return _frame(reply.request_id, kind=reply.kind, data=reply.data)


def _frame(request_id: str, **fields: Any) -> bytes:
    """Every frame's body: the protocol version, the request_id, then the message's fields."""
    return _encode({"v": PROTOCOL_VERSION, "request_id": request_id, **fields})


def decode_reply(body: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Reply:
    """The service side's decoder: after it, `data` has exactly the shapes docs promise."""
    obj = _load(body, max_bytes)
    request_id = _request_id(obj)
    kind = obj.get("kind")
    data = obj.get("data", {})
    if not isinstance(data, dict):
        raise WireError("data must be an object", request_id)
    checker = _REPLY_CHECKS.get(kind) if isinstance(kind, str) else None
    if kind is None or checker is None:
        raise WireError(f"unknown kind {kind!r}", request_id)
    try:
        return Reply(request_id, kind, checker(data))
    except WireError as err:
        raise WireError(f"{kind}: {err.reason}", request_id) from None


def accepted(request_id: str, message: str = "") -> Reply:
    return Reply(request_id, ACCEPTED, {"message": message})


def progress(request_id: str, stage: str, done: int, total: int, message: str = "") -> Reply:
    return Reply(
        request_id, PROGRESS, {"stage": stage, "done": done, "total": total, "message": message}
    )


def result(request_id: str, state: dict[str, Any], message: str = "", **counts: int) -> Reply:
    """counts: aborted, drained, bytes_loaded (see the proto's Result); absent ones are 0."""
    data = {"state": state, "message": message, "aborted": 0, "drained": 0, "bytes_loaded": 0}
    data.update(counts)
    return Reply(request_id, RESULT, data)


def capabilities(
    pause_modes: list[str], *, cancel: bool = True, progress: bool = True, **flags: bool
) -> dict[str, Any]:
    """The `capabilities` object of a status result (see DEFAULT_CAPABILITIES)."""
    return {"pause_modes": list(pause_modes), "cancel": cancel, "progress": progress, **flags}


def reported_capabilities(result_data: dict[str, Any]) -> dict[str, Any]:
    """A decoded status result's capabilities, or the defaults when the engine reports none."""
    caps = result_data.get("capabilities")
    return dict(caps) if caps is not None else _default_capabilities()


def _default_capabilities() -> dict[str, Any]:
    return {**DEFAULT_CAPABILITIES, "pause_modes": list(DEFAULT_PAUSE_MODES)}


def error(request_id: str, code: str, message: str) -> Reply:
    return Reply(request_id, ERROR, {"code": code, "message": message})


def state(
    paused: bool,
    weight_version: str,
    in_flight: int,
    weight_digest: str = "",
    staged_version: str = "",
    staged_bytes: int = 0,
) -> dict[str, Any]:
    """The staged fields are sent only when something is staged: older services ignore them."""
    out = {
        "paused": paused,
        "weight_version": weight_version,
        "in_flight": in_flight,
        "weight_digest": weight_digest,
    }
    if staged_version:
        out["staged_version"] = staged_version
        out["staged_bytes"] = staged_bytes
    return out


# -------------------------------------------------------------------------------- validation


def _load(body: bytes, max_bytes: int) -> dict[str, Any]:
    if len(body) > max_bytes:
        raise WireError(f"frame of {len(body)} bytes exceeds the {max_bytes}-byte limit")
    try:
        obj = _decode(body)
    except (UnicodeDecodeError, ValueError) as err:  # orjson.JSONDecodeError is a ValueError
        raise WireError(f"not UTF-8 JSON: {err}") from None
    if not isinstance(obj, dict):
        raise WireError("body must be a JSON object")
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not 1.0, not true
        raise WireError(f"unsupported protocol version {version!r}", _maybe_id(obj))
    return obj


def _maybe_id(obj: dict[str, Any]) -> str | None:
    rid = obj.get("request_id")
    return rid if isinstance(rid, str) else None


def _request_id(obj: dict[str, Any]) -> str:
    rid = obj.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_WIRE_ID_CHARS:
        raise WireError(f"request_id must be a string of 1-{MAX_WIRE_ID_CHARS} characters")
    return rid


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _text(data: dict[str, Any], key: str, required: bool = False) -> str:
    value = data.get(key, None)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise WireError(f"{key} must be a string")
    if len(value) > MAX_TEXT_CHARS:
        raise WireError(f"{key} exceeds {MAX_TEXT_CHARS} characters")
    return value


def _count(data: dict[str, Any], key: str, limit: int) -> int:
    value = data.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise WireError(f"{key} must be an integer in 0..{limit}")
    return value


def _check_accepted(data: dict[str, Any]) -> dict[str, Any]:
    return {"message": _text(data, "message")}


def _check_progress(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": _text(data, "stage"),
        "done": _count(data, "done", _UINT64),
        "total": _count(data, "total", _UINT64),
        "message": _text(data, "message"),
    }


def _check_state(value: object) -> dict[str, Any]:
    """Field by field, naming the first violation (and accepting a null text as empty)."""
    if not isinstance(value, dict):
        raise WireError("state must be an object")
    paused = value.get("paused", False)
    if not isinstance(paused, bool):
        raise WireError("state.paused must be a boolean")
    checked = {
        "paused": paused,
        "weight_version": _text(value, "weight_version"),
        "in_flight": _count(value, "in_flight", _UINT32),
        "weight_digest": _text(value, "weight_digest"),
    }
    staged_version = _text(value, "staged_version")
    if staged_version:  # as `state` sends them: only when something is staged
        checked["staged_version"] = staged_version
        checked["staged_bytes"] = _count(value, "staged_bytes", _UINT64)
    return checked


def _check_result(data: dict[str, Any]) -> dict[str, Any]:
    """Field by field, naming the first violation (the state's first)."""
    checked = {
        "state": _check_state(data.get("state", {})),
        "message": _text(data, "message"),
        "aborted": _count(data, "aborted", _UINT32),
        "drained": _count(data, "drained", _UINT32),
        "bytes_loaded": _count(data, "bytes_loaded", _UINT64),
    }
    caps = data.get("capabilities")
    if caps is not None:
        checked["capabilities"] = _check_capabilities(caps)
    return checked


def _check_capabilities(value: object) -> dict[str, Any]:
    """Known fields checked by type; pause modes this side does not know are dropped, and so are
    unknown fields that are not yes/no flags (a newer engine's), within the count bound."""
    if not isinstance(value, dict):
        raise WireError("capabilities must be an object")
    if len(value) > MAX_CAPABILITIES:
        raise WireError(f"capabilities has more than {MAX_CAPABILITIES} fields")
    out = _default_capabilities()
    for key, flag in value.items():
        if not 0 < len(key) <= MAX_CAPABILITY_NAME_CHARS:
            raise WireError(f"capability names are 1-{MAX_CAPABILITY_NAME_CHARS} characters")
        if key == "pause_modes":
            out[key] = _pause_modes(flag)
        elif isinstance(flag, bool):
            out[key] = flag
        elif key in DEFAULT_CAPABILITIES:
            raise WireError(f"capabilities.{key} must be a boolean")
    return out


def _pause_modes(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_CAPABILITIES:
        raise WireError(f"capabilities.pause_modes must be a list of at most {MAX_CAPABILITIES}")
    if not all(isinstance(mode, str) for mode in value):
        raise WireError("capabilities.pause_modes must hold strings")
    return sorted(PAUSE_MODES.intersection(value))


def _check_error(data: dict[str, Any]) -> dict[str, Any]:
    code = data.get("code")
    if not isinstance(code, str) or code not in ERROR_CODES:
        raise WireError(f"code {code!r} is not a gRPC status name other than OK")
    return {"code": code, "message": _text(data, "message")}


_REPLY_CHECKS = {
    ACCEPTED: _check_accepted,
    PROGRESS: _check_progress,
    RESULT: _check_result,
    ERROR: _check_error,
}
