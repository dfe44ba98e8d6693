"""vLLM (0.34) through its dev-mode RL routes: /pause, /resume, /is_paused, /collective_rpc,
/update_weight_version, /weight_info, and /metrics for the running-request count.

These routes exist only when vLLM runs with VLLM_SERVER_DEV_MODE=1 and have no auth: bind vLLM
to localhost and let the adapter be the only way in (docs/adapters.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from control_service.adapters.api import Observed, expect_ok, json_field
from control_service.adapters.http import EngineHttp
from control_service.protocol import names

DEV_MODE = "start vLLM with VLLM_SERVER_DEV_MODE=1 (its RL admin routes exist only in dev mode)"
_RUNNING = "vllm:num_requests_running"


class VllmApi:
    label = "vLLM"
    pause_modes: frozenset[str] = frozenset(names.PAUSE_MODES)
    has_version = True
    clear_cache = True

    def __init__(self, http: EngineHttp) -> None:
        self.http = http

    async def observe(self, timeout: float) -> Observed:
        deadline = time.monotonic() + timeout
        paused = await self.http.request("GET", "/is_paused", timeout=timeout, safe=True)
        expect_ok(paused, "is_paused", DEV_MODE)
        is_paused = json_field(paused, "is_paused", bool, "is_paused")
        info = await self.http.request("GET", "/weight_info", timeout=_left(deadline), safe=True)
        expect_ok(info, "weight_info", DEV_MODE)
        version = json_field(info, "weight_version", str, "weight_info")
        running = await self.running(_left(deadline))
        return Observed(bool(is_paused), str(version), running or 0)

    async def running(self, timeout: float) -> int | None:
        response = await self.http.request("GET", "/metrics", timeout=timeout, safe=True)
        if not response.ok or not isinstance(response.body, str):
            return None
        return running_requests(response.body)

    async def pause(self, mode: str, clear_cache: bool, timeout: float) -> int:
        params = {"mode": mode}
        if mode != names.KEEP:  # vLLM ignores clear_cache for keep: not sent, so the log says so
            params["clear_cache"] = "true" if clear_cache else "false"
        response = await self.http.request("POST", "/pause", params=params, timeout=timeout)
        expect_ok(response, f"pause (mode={mode})", DEV_MODE)
        return 0

    async def load(
        self, uri: str, version: str, kept_cache: bool, timeout: float, phase: Callable[[str], None]
    ) -> str:
        deadline = time.monotonic() + timeout
        body = {"method": "reload_weights", "kwargs": {"weights_path": uri}, "timeout": timeout}
        response = await self.http.request(
            "POST", "/collective_rpc", json_body=body, timeout=timeout
        )
        expect_ok(response, "reload_weights", DEV_MODE)
        phase("setting_version")
        response = await self.http.request(
            "POST", "/update_weight_version", json_body={"new_version": version},
            timeout=_left(deadline), safe=True,  # setting a label twice is harmless
        )  # fmt: skip
        expect_ok(response, "update_weight_version", DEV_MODE)
        return f"vLLM reloaded weights from {uri}; version set to {version}"

    async def resume(self, timeout: float) -> None:
        response = await self.http.request("POST", "/resume", timeout=timeout)
        expect_ok(response, "resume", DEV_MODE)


def running_requests(metrics: str) -> int | None:
    """vllm:num_requests_running summed over its label sets (one per model / engine)."""
    total, seen = 0.0, False
    for line in metrics.splitlines():
        if line.startswith(_RUNNING) and line[len(_RUNNING) : len(_RUNNING) + 1] in ("{", " "):
            try:
                total += float(line.rsplit(None, 1)[-1])
            except ValueError:
                continue
            seen = True
    return int(total) if seen else None


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)
