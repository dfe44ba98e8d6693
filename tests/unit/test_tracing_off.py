"""Tracing is a no-op unless configured, and a plain install (no OpenTelemetry) needs none of it.

"Not installed" is simulated properly: a fresh interpreter whose import system refuses every
opentelemetry module (a meta-path finder), so nothing already imported can hide an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from control_service.protocol import tracing

ROOT = Path(__file__).resolve().parents[2]

BLOCK_OTEL = """
import importlib.abc, sys
class NoOtel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoOtel())
"""

EXERCISE = """
import asyncio, json, sys
from control_service.client._tracing import trace_metadata
from control_service.engine import EngineTracing, trace_headers
from control_service.protocol import tracing, wire
from control_service.server.tracing import ServerTracing
import control_service.adapters.http, control_service.cli.serve, control_service.server.server

server, engine = ServerTracing.from_env(), EngineTracing.from_env("engine")
body = wire.encode_request(wire.Request("r", "resume", {}, 1.0, tracing.TraceContext(
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")))
print(json.dumps({
    "server": server is None, "engine": engine is None,
    "summary": tracing.configure_from_env("x").summary,
    "client": list(trace_metadata()), "headers": trace_headers(),
    "decoded": wire.decode_request(body).trace.traceparent[:2],
    "otel_loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
}))
"""


def run(prelude: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", prelude + EXERCISE], capture_output=True, text=True, cwd=ROOT,
        env={**clean, **env}, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_without_opentelemetry_installed_tracing_asked_for_stays_off_and_says_why() -> None:
    got = run(BLOCK_OTEL, OTEL_TRACES_EXPORTER="otlp")
    assert got["server"] is True and got["engine"] is True
    assert "not installed" in str(got["summary"]) and "control-service[otel]" in str(got["summary"])
    assert got["client"] == [] and got["headers"] == {}
    assert got["decoded"] == "00", "the wire's trace field needs no OpenTelemetry"
    assert got["otel_loaded"] == []


def test_installed_but_not_configured_loads_none_of_it() -> None:
    got = run("")
    assert got["server"] is True and got["engine"] is True
    assert got["summary"] == "tracing off: no OTEL_TRACES_EXPORTER or OTLP endpoint set"
    assert got["otel_loaded"] == [], "a process that does not trace imports no OpenTelemetry"


@pytest.mark.parametrize(
    ("env", "summary"),
    [
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, "OTEL_SDK_DISABLED"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"},
         "OTEL_TRACES_EXPORTER=none"),
    ],
)  # fmt: skip
def test_the_standard_switches_turn_it_off(
    env: dict[str, str], summary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    setup = tracing._configure("x")
    assert not setup.on and summary in setup.summary


def test_an_otlp_endpoint_alone_turns_it_on_with_otlp() -> None:
    got = run("", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1", OTEL_SERVICE_NAME="svc")
    assert got["server"] is False and got["engine"] is False
    assert got["summary"] == (
        "tracing on: service.name svc, exporting to otlp_proto_grpc at http://127.0.0.1:1"
    )


def test_an_exporter_that_does_not_exist_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(tracing.TracingConfigError, match="OTEL_TRACES_EXPORTER=zipkin"):
        tracing._configure("x")
