"""Which span exporters the OTEL_* variables name, found the way the SDK's auto-configuration
finds them: each is an entry point in the group `opentelemetry_traces_exporter`, published by the
package that provides it (`console` by the SDK, `otlp_proto_grpc` by the OTLP exporter, ...).

Read here with `importlib.metadata`, a public API, rather than with the SDK's helpers
(`opentelemetry.sdk._configuration`), which are private and may change in any release; what they
do for traces is the few rules below. OpenTelemetry itself is imported only to load the exporters.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Final

GROUP: Final = "opentelemetry_traces_exporter"
OTLP: Final = "otlp"  # not an entry point: the protocol variables choose one of these
_BY_PROTOCOL: Final = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_PROTOCOL_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")


def names(env: Mapping[str, str]) -> list[str]:
    """The entry point names OTEL_TRACES_EXPORTER asks for, in its order (a comma list; empty:
    `otlp`, as when only an OTLP endpoint is set); `otlp` becomes the one for the OTLP protocol
    the variables set (grpc when none). ValueError for a protocol with no exporter. The caller
    has already handled `none`."""
    asked = env.get("OTEL_TRACES_EXPORTER", "").strip()
    listed = [name.strip() for name in asked.split(",")] if asked else [OTLP]
    return [_otlp_by_protocol(env) if name == OTLP else name for name in listed]


def _otlp_by_protocol(env: Mapping[str, str]) -> str:
    protocol = next((env[name] for name in _PROTOCOL_VARIABLES if env.get(name)), "grpc").strip()
    if protocol not in _BY_PROTOCOL:
        raise ValueError(f"unsupported OTLP protocol {protocol!r} (grpc or http/protobuf)")
    return _BY_PROTOCOL[protocol]


def load(wanted: list[str]) -> dict[str, Any]:
    """Each name's exporter class, by name (a name given twice, once). ValueError naming the
    first that no installed package provides, or that is not a span exporter; ImportError when
    its package is installed but cannot be imported."""
    from opentelemetry.sdk.trace.export import SpanExporter

    found: dict[str, Any] = {}
    for name in wanted:
        exporter = _entry_point(name).load()
        if not (isinstance(exporter, type) and issubclass(exporter, SpanExporter)):
            raise ValueError(f"{name!r} is not a span exporter")
        found[name] = exporter
    return found


def _entry_point(name: str) -> Any:
    entry_point = next(iter(entry_points(group=GROUP, name=name)), None)
    if entry_point is not None:
        return entry_point
    installed = ", ".join(sorted(entry_points(group=GROUP).names)) or "none"
    raise ValueError(f"no exporter {name!r} is installed (installed: {installed})")
