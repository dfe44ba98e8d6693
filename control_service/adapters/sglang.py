"""SGLang (0.5.23) through its native admin routes: /pause_generation, /continue_generation,
/update_weights_from_disk, /flush_cache, /model_info (weight_version) and /ready.

Quirks handled here: `pause_generation {"mode": "abort"}` aborts requests but leaves the scheduler
running, so ABORT is abort then `in_place` (nothing is left to freeze: exact); SGLang has no
drain-then-pause, so WAIT is not offered; after an `in_place` pause (KEEP) the load must not flush
the cache, or it changes the weights and then reports failure; there is no pause query, so
`/ready` (503 while paused *or* unhealthy) stands in for one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from control_service.adapters.api import Observed, expect_ok, json_field
from control_service.adapters.http import EngineHttp, HttpError
from control_service.protocol import names

NOT_SGLANG = "is the URL an SGLang (0.5.23 or later) server?"
_READY_NOTE = "SGLang has no pause query: /ready answers 503, taken as paused (or unhealthy)"


class SglangApi:
    label = "SGLang"
    pause_modes: frozenset[str] = frozenset({names.ABORT, names.KEEP})
    has_version = True
    clear_cache = True

    def __init__(self, http: EngineHttp) -> None:
        self.http = http

    async def observe(self, timeout: float) -> Observed:
        deadline = time.monotonic() + timeout
        info = expect_ok(
            await self.http.request("GET", "/model_info", timeout=timeout, safe=True),
            "model_info", NOT_SGLANG,
        )  # fmt: skip
        version = info.body.get("weight_version") if isinstance(info.body, dict) else None
        ready = await self.http.request("GET", "/ready", timeout=_left(deadline), safe=True)
        if ready.status == 503:
            return Observed(True, str(version or ""), 0, _READY_NOTE)
        expect_ok(ready, "ready", NOT_SGLANG)
        return Observed(False, str(version or ""))

    async def running(self, timeout: float) -> int | None:
        return None  # only with --enable-metrics, under names that move between releases

    async def pause(self, mode: str, clear_cache: bool, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        if mode == names.ABORT:
            await self._pause_generation("abort", timeout)
        await self._pause_generation("in_place", _left(deadline))
        if clear_cache and mode == names.ABORT:  # KEEP keeps the KV cache: that is its point
            response = await self.http.request("POST", "/flush_cache", timeout=_left(deadline))
            expect_ok(response, "flush_cache", NOT_SGLANG)
        return 0

    async def _pause_generation(self, mode: str, timeout: float) -> None:
        response = await self.http.request(
            "POST", "/pause_generation", json_body={"mode": mode}, timeout=timeout
        )
        expect_ok(response, f"pause_generation (mode={mode})", NOT_SGLANG)

    async def load(
        self, uri: str, version: str, kept_cache: bool, timeout: float, phase: Callable[[str], None]
    ) -> str:
        deadline = time.monotonic() + timeout
        body: dict[str, object] = {"model_path": uri, "weight_version": version}
        if kept_cache:
            body["flush_cache"] = False  # frozen requests hold the cache: a flush would fail
        response = await self.http.request(
            "POST", "/update_weights_from_disk", json_body=body, timeout=timeout
        )
        success = response.body.get("success") if isinstance(response.body, dict) else None
        if success is True and response.ok:
            return f"SGLang: {response.text()}"
        if success is False:  # the engine's verdict; whether the weights changed is read here
            message = f"SGLang reports the load failed: {response.text()}"
            raise HttpError("UNKNOWN", f"{message}; {await self._which(uri, deadline)}")
        expect_ok(response, "update_weights_from_disk", NOT_SGLANG)
        raise HttpError("INTERNAL", f"update_weights_from_disk: no 'success' in {response.text()}")

    async def resume(self, timeout: float) -> None:
        response = await self.http.request("POST", "/continue_generation", timeout=timeout)
        expect_ok(response, "continue_generation", NOT_SGLANG)

    async def _which(self, uri: str, deadline: float) -> str:
        """After a failed load, which weights SGLang serves: a failed cache flush comes after
        the weights changed, and then it serves the new weights under the old version."""
        try:
            info = expect_ok(
                await self.http.request("GET", "/model_info", timeout=_left(deadline), safe=True),
                "model_info", NOT_SGLANG,
            )  # fmt: skip
            path = str(json_field(info, "model_path", str, "model_info"))
        except HttpError as err:
            return f"which weights it serves is unknown ({err.message})"
        if path == uri:
            return f"its model_path is now {uri}: the NEW weights are loaded"
        return f"its model_path is still {path}: the old weights are loaded"


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)
