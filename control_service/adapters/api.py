"""What the adapter needs from an engine's HTTP API, whatever the engine: one class per engine
(vllm.py, sglang.py, fastdeploy.py) turns these calls into its routes, fields and quirks.

The methods do one engine request each (or the fixed sequence the engine needs for one step), and
raise `HttpError` with a precise gRPC status name; the adapter's state machine (handler.py)
decides when to call them, and never twice where twice would be a hazard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from control_service.adapters.http import EngineHttp, HttpError, Response, code_for


@dataclass(frozen=True, slots=True)
class Observed:
    """The engine's state as read from it. `version` is "" for an engine without a version
    query; `note` says what the engine could not tell for sure."""

    paused: bool
    version: str = ""
    in_flight: int = 0
    note: str = ""


class EngineApi(Protocol):
    label: str  # "vLLM", in messages
    pause_modes: frozenset[str]
    has_version: bool  # the engine can be asked which version it serves
    clear_cache: bool  # Pause(clear_cache) is honoured

    async def observe(self, timeout: float) -> Observed: ...

    async def running(self, timeout: float) -> int | None:
        """Generation requests running now, where the engine exposes that; else None."""
        ...

    async def pause(self, mode: str, clear_cache: bool, timeout: float) -> int:
        """Pause as `mode` says; return how many requests were aborted, when known (else 0)."""
        ...

    async def load(
        self, uri: str, version: str, kept_cache: bool, timeout: float, phase: Callable[[str], None]
    ) -> str:
        """Load the weights and set the version; return the result's message. `kept_cache`: the
        engine was paused with its KV cache kept (KEEP). `phase` announces each later step."""
        ...

    async def resume(self, timeout: float) -> None: ...


def expect_ok(response: Response, what: str, missing_route: str = "") -> Response:
    """The response if 2xx; else the HttpError its status means, in the engine's own words. A 404
    on a control route means the engine was started without its admin API: say how to fix it."""
    if response.ok:
        return response
    code = code_for(response.status)
    if response.status == 404 and missing_route:
        raise HttpError(code, f"{what}: route not found (HTTP 404): {missing_route}", 404)
    raise HttpError(code, f"{what}: HTTP {response.status}: {response.text()}", response.status)


def json_field(response: Response, key: str, kind: type, what: str) -> object:
    """A field of a JSON object answer, of the type expected, or INTERNAL naming what came."""
    body = response.body
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, kind):
        expected = f"{key!r} ({kind.__name__})"
        raise HttpError("INTERNAL", f"{what}: expected {expected} in {response.text()}")
    return value


__all__ = ["EngineApi", "EngineHttp", "HttpError", "Observed", "expect_ok", "json_field"]
