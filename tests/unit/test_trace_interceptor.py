"""An instrumentation release without the hooks the service's interceptor uses fails tracing's
start (a ConfigError naming the version installed and the one supported), not every traced call.

Such a release cannot be installed beside the one the tests use, so it is stood for by taking a
hook away, or giving it another shape, for the length of a test (monkeypatch puts it back).
"""

from __future__ import annotations

import re
import tomllib
from contextlib import AbstractContextManager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.grpc import _aio_server, _server
from opentelemetry.sdk.trace import TracerProvider

from control_service.protocol import tracing
from control_service.server import trace_interceptor
from control_service.server.config import ConfigError
from control_service.server.tracing import ServerTracing

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = version("opentelemetry-instrumentation-grpc")


def refused(reason: str) -> AbstractContextManager[Any]:
    """The start's ConfigError: names the installed version, what is missing, the range."""
    words = [
        INSTALLED,
        reason,
        f"supported: opentelemetry-instrumentation-grpc{trace_interceptor.SUPPORTED}",
    ]
    return pytest.raises(ConfigError, match=".*".join(re.escape(word) for word in words))


def test_the_installed_instrumentation_has_every_hook() -> None:
    assert trace_interceptor.missing_hooks(_aio_server) == []
    assert issubclass(ServerTracing(TracerProvider())._interceptor_class,
                      _aio_server.OpenTelemetryAioServerInterceptor)  # fmt: skip


@pytest.mark.parametrize("hook", ["_start_span", "_set_remote_context"])
def test_a_release_without_a_hook_fails_the_start(
    hook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(_server.OpenTelemetryServerInterceptor, hook)
    with refused(f"OpenTelemetryAioServerInterceptor.{hook}"):
        ServerTracing(TracerProvider())


def test_a_release_without_the_stream_wrapper_fails_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(
        _aio_server.OpenTelemetryAioServerInterceptor, "_intercept_aio_server_stream"
    )
    with refused("_intercept_aio_server_stream"):
        ServerTracing(TracerProvider())


def test_a_hook_called_another_way_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def start_span(self: Any, handler_call_details: Any, context: Any) -> None:
        """As if a release dropped the `set_status_on_exception` keyword the subclass passes."""

    monkeypatch.setattr(_server.OpenTelemetryServerInterceptor, "_start_span", start_span)
    with refused("OpenTelemetryAioServerInterceptor._start_span"):
        ServerTracing(TracerProvider())


def test_a_release_without_the_servicer_context_fails_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(_aio_server, "_OpenTelemetryAioServicerContext")
    with refused("_OpenTelemetryAioServicerContext"):
        ServerTracing(TracerProvider())


def test_from_env_fails_with_the_config_error_the_cli_exits_2_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on = tracing.TracingSetup(TracerProvider(), "tracing on")  # as OTEL_* would make it
    monkeypatch.setattr(tracing, "configure_from_env", lambda name: on)
    monkeypatch.delattr(_server.OpenTelemetryServerInterceptor, "_start_span")
    with refused("_start_span"):
        ServerTracing.from_env()


def test_the_supported_range_is_the_declared_floor_and_the_locked_version() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = next(r for r in extra["optional-dependencies"]["otel"]
                    if r.startswith("opentelemetry-instrumentation-grpc"))  # fmt: skip
    floor = declared.removeprefix("opentelemetry-instrumentation-grpc")
    locked = re.search(r"^opentelemetry-instrumentation-grpc==(\S+)$",
                       (ROOT / "constraints.txt").read_text(), re.MULTILINE)  # fmt: skip
    assert locked is not None
    assert trace_interceptor.SUPPORTED.startswith(f"{floor} ")
    tested = trace_interceptor.SUPPORTED.partition("tested: ")[2].rstrip(")").split(", ")
    assert floor.removeprefix(">=") in tested and locked.group(1) in tested
