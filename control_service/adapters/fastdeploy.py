"""FastDeploy (2.6+, `--dynamic-load-weight`) through its V1 control routes: /v1/pause,
/v1/resume, /v1/is_paused, /v1/update_weights.

FastDeploy's pause aborts what runs (ABORT only: no drain, no freeze) and does not clear the
prefix cache; /v1/update_weights takes a version, not a path: FastDeploy finds the weights
through its own `--load_strategy`, so the uri is not sent. It has no version query, so the
adapter reports the version it last set (handler.py says so in the status message).
"""

from __future__ import annotations

from collections.abc import Callable

from control_service.adapters.api import Observed, expect_ok, json_field
from control_service.adapters.http import EngineHttp
from control_service.protocol import names

DYNAMIC_LOAD = (
    "start FastDeploy (2.6 or later) with --dynamic-load-weight for its /v1 control routes"
)


class FastDeployApi:
    label = "FastDeploy"
    pause_modes: frozenset[str] = frozenset({names.ABORT})
    has_version = False
    clear_cache = False

    def __init__(self, http: EngineHttp) -> None:
        self.http = http

    async def observe(self, timeout: float) -> Observed:
        response = await self.http.request("GET", "/v1/is_paused", timeout=timeout, safe=True)
        paused = json_field(expect_ok(response, "is_paused", DYNAMIC_LOAD), "is_paused", bool,
                            "is_paused")  # fmt: skip
        return Observed(bool(paused))

    async def running(self, timeout: float) -> int | None:
        return None

    async def pause(self, mode: str, clear_cache: bool, timeout: float) -> int:
        response = await self.http.request("POST", "/v1/pause", timeout=timeout)
        expect_ok(response, "pause", DYNAMIC_LOAD)
        return 0

    async def load(
        self, uri: str, version: str, kept_cache: bool, timeout: float, phase: Callable[[str], None]
    ) -> str:
        response = await self.http.request(
            "POST", "/v1/update_weights", json_body={"version": version}, timeout=timeout
        )
        expect_ok(response, "update_weights", DYNAMIC_LOAD)
        return (
            f"FastDeploy loaded version {version} through its own load strategy; "
            f"the uri {uri} was not sent (FastDeploy finds weights by version)"
        )

    async def resume(self, timeout: float) -> None:
        response = await self.http.request("POST", "/v1/resume", timeout=timeout)
        expect_ok(response, "resume", DYNAMIC_LOAD)
