"""The gRPC instrumentation's aio server interceptor, taught this service's streaming handlers, and
checked once, when tracing starts, against the instrumentation installed.

Every mutating RPC here streams its replies with `context.write` from a coroutine function. The
stock interceptor (opentelemetry-instrumentation-grpc, 0.64b0 to 0.66b2 at least) iterates every
streaming handler with `async for`, which fails each such call (upstream: open-telemetry/
opentelemetry-python-contrib#3066, open), and it offers no public way to change that. So the
subclass here overrides the private method that wraps a streaming handler, and builds its wrapper
from the private pieces the stock wrappers use: the caller's context, the span, the servicer
context that records an abort on the span. A release that changes any of them would fail every
traced call; `interceptor_class` checks their shape first, so such a release fails the start
instead (a ConfigError: the CLI's exit 2), naming the version installed and the one supported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any, Final

from control_service.server.config import ConfigError

DISTRIBUTION: Final = "opentelemetry-instrumentation-grpc"
# The otel extra's floor (pyproject.toml) and the versions the tracing tests passed with (the
# floor, and the lock's: constraints.txt); tests/unit/test_trace_interceptor.py keeps them so.
SUPPORTED: Final = ">=0.64b0 (tested: 0.64b0, 0.66b2)"
_ANY: Final = object()
# Each hook the subclass uses, with the arguments it passes (after self).
_HOOK_CALLS: Final[dict[str, tuple[tuple[object, ...], dict[str, object]]]] = {
    "_intercept_aio_server_stream": ((_ANY, _ANY), {}),  # (behavior, handler_call_details)
    "_set_remote_context": ((_ANY,), {}),  # (servicer context)
    "_start_span": ((_ANY, _ANY), {"set_status_on_exception": False}),
}
_CONTEXT_CLASS: Final = "_OpenTelemetryAioServicerContext"  # (servicer context, span)


def interceptor_class() -> type:
    """The interceptor class (built from the installed instrumentation); ConfigError when that
    is missing, or lacks a hook the subclass uses, or has it with another shape."""
    try:
        from opentelemetry.instrumentation.grpc import _aio_server
    except ImportError as err:
        raise ConfigError(f"tracing needs {DISTRIBUTION} {SUPPORTED}, which cannot be imported "
                          f"({err}): install control-service[otel]") from None  # fmt: skip
    missing = missing_hooks(_aio_server)
    if missing:
        raise ConfigError(
            f"tracing: {DISTRIBUTION} {_installed_version()} lacks what traced streaming calls "
            f"need ({', '.join(missing)}); supported: {DISTRIBUTION}{SUPPORTED}"
        )
    return _writer_aware(_aio_server.OpenTelemetryAioServerInterceptor,
                         getattr(_aio_server, _CONTEXT_CLASS))  # fmt: skip


def missing_hooks(aio_server: ModuleType) -> list[str]:
    """The hooks of the instrumentation's `_aio_server` module the subclass uses that are not
    there, or cannot be called as it calls them (none: this version works)."""
    base = getattr(aio_server, "OpenTelemetryAioServerInterceptor", None)
    if not isinstance(base, type):
        return ["OpenTelemetryAioServerInterceptor"]
    missing = [f"{base.__name__}.{name}" for name, (args, keywords) in _HOOK_CALLS.items()
               if not _callable_as(getattr(base, name, None), (_ANY, *args), keywords)]  # fmt: skip
    context = getattr(aio_server, _CONTEXT_CLASS, None)
    init = getattr(context, "__init__", None)  # a wrapt proxy class: inspect can read only this
    if not isinstance(context, type) or not _callable_as(init, (_ANY,) * 3, {}):
        missing.append(_CONTEXT_CLASS)
    return missing


def _callable_as(hook: object, args: tuple[object, ...], keywords: dict[str, object]) -> bool:
    if not callable(hook):
        return False
    try:
        inspect.signature(hook).bind(*args, **keywords)
    except (TypeError, ValueError):  # no such parameters; no signature to read
        return False
    return True


def _installed_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "(version unknown)"


def _writer_aware(base: type, servicer_context: type) -> type:
    """`base` with one difference: a streaming handler that is a coroutine function (it writes
    with `context.write`) is awaited inside the same remote context and span the stock wrapper
    makes, rather than iterated."""

    class _WriterAwareInterceptor(base):
        def _intercept_aio_server_stream(
            self, behavior: Callable[..., Any], handler_call_details: Any
        ) -> Callable[..., Any]:
            if not inspect.iscoroutinefunction(behavior):
                return super()._intercept_aio_server_stream(behavior, handler_call_details)

            async def writer(request: Any, context: Any) -> None:
                with self._set_remote_context(context):
                    with self._start_span(
                        handler_call_details, context, set_status_on_exception=False
                    ) as span:
                        await behavior(request, servicer_context(context, span))

            return writer

    return _WriterAwareInterceptor
