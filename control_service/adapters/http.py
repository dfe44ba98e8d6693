"""The adapter's HTTP client: one pooled httpx client per engine, bounded, with outcomes as codes.

httpx rather than aiohttp: per-request timeouts split into connect/read/write/pool, a typed and
small API, streaming reads (so a response is bounded while it arrives, not after), connection
pool limits, and no server stack pulled into a process that is only a client.

Every request made for a traced call carries that call's `traceparent` / `tracestate` headers
(control_service.engine.trace_headers), so the engine's own spans (vLLM exports OTLP traces)
join the trainer's trace.

Every outcome becomes either a `Response` (any HTTP status; the caller decides what a 400 from its
engine means) or an `HttpError` with a gRPC status name, so the rest of the adapter never sees an
httpx exception. Retries happen here and only where the caller says the call is safe to repeat
(reads, idempotent writes), only for transport errors and 5xx, and only within the time given.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from control_service.engine import trace_headers

# Between retries of a safe call: short, since the whole call is bounded by its own timeout.
_RETRY_BACKOFF_S = (0.05, 0.2, 0.5)
_MAX_ERROR_TEXT = 300
# 5xx worth another try on a safe call; 503 is an answer (SGLang's /ready says "paused").
_RETRIED = frozenset({500, 502, 504})


class HttpError(Exception):
    """A call that got no usable answer: `code` is a gRPC status name (UNAVAILABLE, ...)."""

    def __init__(
        self, code: str, message: str, status: int | None = None, sent: bool = True
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.sent = sent  # False only when the request surely never reached the engine


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any  # parsed JSON, or the text when the body is not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        """The engine's own words, short: a JSON error's message, or the body."""
        body = self.body
        if isinstance(body, dict):
            for key in ("message", "error", "detail", "error_msg"):
                value = body.get(key)
                if isinstance(value, dict):
                    value = value.get("message", value)
                if value:
                    return _short(str(value))
        return _short(body if isinstance(body, str) else json.dumps(body))


# HTTP statuses with a fixed meaning for every engine; 404 and 400 on specific routes are the
# engine modules' to explain (a missing admin route, a load that reported failure).
_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "FAILED_PRECONDITION",
    409: "FAILED_PRECONDITION",
    422: "INVALID_ARGUMENT",
    503: "UNAVAILABLE",
}


def code_for(status: int) -> str:
    if status in _CODES:
        return _CODES[status]
    return "INTERNAL" if status >= 500 else "UNKNOWN"


class EngineHttp:
    """The engine's HTTP API at `base_url`. One client, so connections are reused."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 2.0,
        max_response_bytes: int = 1 << 20,
        retries: int = 2,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._connect_timeout_s = connect_timeout_s
        self._max_bytes = max_response_bytes
        self._retries = min(retries, len(_RETRY_BACKOFF_S))
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
            follow_redirects=False,
            trust_env=False,  # a sidecar talks to its own engine: never through a proxy
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        safe: bool = False,
    ) -> Response:
        """One call within `timeout` seconds in all (retries included). Never raises httpx's
        exceptions: HttpError(UNAVAILABLE) when the engine cannot be reached or the connection
        broke, HttpError(DEADLINE_EXCEEDED) when no full answer came in time."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _late(method, path, timeout)
            try:
                response = await self._once(method, path, remaining, json_body, params)
            except HttpError as err:
                if not (safe and err.code == "UNAVAILABLE" and attempt < self._retries):
                    raise
            else:
                if not (safe and response.status in _RETRIED and attempt < self._retries):
                    return response
            backoff = _RETRY_BACKOFF_S[attempt]
            attempt += 1
            if time.monotonic() + backoff >= deadline:
                raise _late(method, path, timeout)
            await asyncio.sleep(backoff)

    async def _once(
        self,
        method: str,
        path: str,
        timeout: float,
        json_body: Any,
        params: dict[str, str] | None,
    ) -> Response:
        where = f"{method} {self.base_url}{path}"
        limits = httpx.Timeout(timeout, connect=min(timeout, self._connect_timeout_s))
        try:
            async with asyncio.timeout(timeout):  # the whole exchange, not each read
                async with self._client.stream(
                    method,
                    path,
                    json=json_body,
                    params=params,
                    timeout=limits,
                    headers=trace_headers(),
                ) as response:
                    raw = await self._read_bounded(response, where)
        except (TimeoutError, httpx.TimeoutException):
            raise _late(method, path, timeout) from None
        except httpx.ConnectError as err:
            reason = _reason(err)
            message = f"cannot connect to {self.base_url}: {reason}"
            raise HttpError("UNAVAILABLE", message, sent=False) from None
        except httpx.TransportError as err:
            reason = _reason(err)
            raise HttpError("UNAVAILABLE", f"{where}: connection broke: {reason}") from None
        return Response(response.status_code, _parse(raw))

    async def _read_bounded(self, response: httpx.Response, where: str) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise HttpError("INTERNAL", f"{where}: response of {declared} bytes exceeds the limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise HttpError("INTERNAL", f"{where}: response exceeds {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _late(method: str, path: str, timeout: float) -> HttpError:
    return HttpError("DEADLINE_EXCEEDED", f"{method} {path}: no answer within {timeout:.3g}s")


def _parse(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _reason(err: BaseException) -> str:
    """The operating system's reason where httpx wraps it ('connection refused', ...)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = seen.__cause__ or seen.__context__
    return _short(str(err) or type(err).__name__)


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."
