"""Private helpers of `control_service.client`: channel building, error mapping, small values.

Kept apart so the public module reads as its surface (config, client, outcome) and these pieces
can be tested on their own without a server.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from control_service.client._tracing import trace_metadata
from control_service.errors import ControlError, from_rpc_error, invalid
from control_service.gen.control.v1 import control_pb2
from control_service.protocol import names
from control_service.protocol.proto_enums import PAUSE_MODE_VALUES, REFIT_POLICY_VALUES

EventCallback = Callable[[control_pb2.ControlEvent], Awaitable[None] | None]


def new_request_id() -> str:
    """A fresh request id, made on the client so that a retry can send the same one again."""
    return uuid.uuid4().hex


def checked_request_id(request_id: str | None) -> str:
    """The caller's id, or a new one; a malformed id fails here rather than after a round trip."""
    if not request_id:
        return new_request_id()
    if not names.is_request_id(request_id):
        raise invalid(f"request id {request_id!r} must be {names.REQUEST_ID_RULE}")
    return request_id


def pause_mode(mode: str | None) -> control_pb2.PauseMode:
    """'abort' | 'wait' | 'keep' | None (the server's default) as the proto enum."""
    if mode is None:
        return control_pb2.PAUSE_MODE_UNSPECIFIED
    value = PAUSE_MODE_VALUES.get(mode)
    if value is None:
        raise invalid(f"pause mode {mode!r} must be one of {', '.join(names.PAUSE_MODES)} or None")
    return value


def refit_policy(policy: str) -> control_pb2.RefitFailurePolicy:
    """'resume_old_weights' | 'stay_paused' as the proto enum."""
    value = REFIT_POLICY_VALUES.get(policy)
    if value is None:
        raise invalid(f"on_failure must be one of {sorted(names.REFIT_POLICIES)}")
    return value


def failure_budget(max_failed_engines: int) -> int:
    """max_failed_engines as the proto's uint32; the service checks it against the engines."""
    if isinstance(max_failed_engines, bool) or not 0 <= max_failed_engines <= 2**32 - 1:
        raise invalid(f"max_failed_engines must be an integer >= 0, got {max_failed_engines!r}")
    return max_failed_engines


def duration(seconds: float) -> duration_pb2.Duration:
    """Seconds as a protobuf Duration (the wire form of every timeout)."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def check_timeout(timeout_s: float | None) -> float | None:
    """None means "the server's default"; anything else must be a positive number of seconds."""
    if timeout_s is not None and not timeout_s > 0:
        raise invalid(f"timeout must be > 0 seconds, got {timeout_s}")
    return timeout_s


def error_from_rpc(error: grpc.RpcError) -> ControlError:
    """The client-side ControlError for a failed call, with one EngineFailure per ErrorInfo.

    The mapping itself lives in control_service.errors next to its inverse (to_grpc_status), so
    the two sides cannot drift; a status without a message gets its code name as the message.
    """
    converted = from_rpc_error(error)
    if converted.message:
        return converted
    return ControlError(converted.code, converted.code.name, converted.failures)


async def call_back(callback: EventCallback | None, event: control_pb2.ControlEvent) -> None:
    """Run a sync or async event callback; its exceptions propagate and end the call."""
    if callback is None:
        return
    result = callback(event)
    if inspect.isawaitable(result):
        await result


def read_optional(path: Path | None) -> bytes | None:
    """A PEM file's bytes, or None when no path is configured."""
    return None if path is None else Path(path).read_bytes()


def keepalive_options(time_s: float | None, timeout_s: float) -> list[tuple[str, Any]]:
    """Channel options for HTTP/2 keepalive pings while a call is open (none when disabled).

    Pings only while calls are open (permit_without_calls=0): a long Pause(WAIT) or weight load
    on a dead host is then detected without waiting for the operation's timeout.
    """
    if time_s is None:
        return []
    return [
        ("grpc.keepalive_time_ms", int(time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
    ]


def dedupe_key(event: control_pb2.ControlEvent) -> bytes:
    """Identity of an event, to drop the exact repeats a retried (replayed) stream may send."""
    return event.SerializeToString(deterministic=True)


def metadata(bearer_token: str | None) -> Sequence[tuple[str, str]] | None:
    """Per-call metadata: the bearer token, when one is configured, and the trainer's trace
    context, when a span is current (_tracing.py)."""
    bearer = names.bearer_metadata(bearer_token)
    traced = trace_metadata()
    if not traced:
        return bearer
    return (*(bearer or ()), *traced)
