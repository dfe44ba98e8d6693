"""Running an adapter: the engine's HTTP client, its API module, the state machine, and the
engine library's ROUTER server, until SIGTERM/SIGINT. `run_adapter` is the single entry point."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from control_service.adapters.api import EngineApi
from control_service.adapters.config import AdapterConfig
from control_service.adapters.fastdeploy import FastDeployApi
from control_service.adapters.handler import AdapterHandler
from control_service.adapters.http import EngineHttp
from control_service.adapters.sglang import SglangApi
from control_service.adapters.vllm import VllmApi
from control_service.engine import (
    CurveConfig,
    EngineServer,
    EngineServerConfig,
    serve_until_signalled,
)

log = logging.getLogger("control_service.adapters")

_APIS: dict[str, type[VllmApi] | type[SglangApi] | type[FastDeployApi]] = {
    "vllm": VllmApi,
    "sglang": SglangApi,
    "fastdeploy": FastDeployApi,
}


def engine_api(config: AdapterConfig, http: EngineHttp) -> EngineApi:
    return _APIS[config.engine](http)


async def serve(config: AdapterConfig) -> int:
    """Serve until signalled; 0, or 2 when the adapter cannot start (e.g. the bind fails).
    An unreachable engine is no reason not to start: the adapter reports it and waits."""
    http = EngineHttp(
        config.url,
        api_key=config.api_key(),
        connect_timeout_s=config.connect_timeout_s,
        max_response_bytes=config.max_response_bytes,
        retries=config.retries,
    )
    handler = AdapterHandler(engine_api(config, http), config)
    try:
        found = await handler.reconcile()
        log.info("%s at %s: %s", handler.api.label, config.url, found)
        curve = (
            CurveConfig(config.curve_secret_key, config.curve_allowed_clients)
            if config.curve_secret_key is not None
            else None
        )
        server = EngineServer(
            handler, EngineServerConfig(bind=config.bind, name=config.server_name, curve=curve)
        )

        def ready(endpoint: str) -> None:
            line = {"event": "ready", "endpoint": endpoint, "engine": config.engine, "state": found}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

        return await serve_until_signalled(server, ready)
    finally:
        await http.close()


def run_adapter(config: AdapterConfig) -> int:
    """Run one adapter process to its end; returns the exit code."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the `fast` extra is not installed
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))
