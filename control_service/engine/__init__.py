"""The engine side of the engine protocol, as a library (docs/engine-protocol.md).

An engine implements `EngineHandler` (capabilities, status, pause, update_weights, resume), and
`Stager` (stage_weights, commit_staged) if it can load while serving, and
serves it with `EngineServer(handler, EngineServerConfig(bind=...)).serve()`, or `run(...)` as a
process. The server does the protocol's duties; the handler does only what the engine does.
This package imports only control_service.protocol, the standard library and pyzmq: never the
service, never grpc.
"""

from .config import CurveConfig, EngineServerConfig
from .handler import (
    Capabilities,
    Done,
    EngineError,
    EngineHandler,
    EngineState,
    Operation,
    Stager,
    can_stage,
    clip,
)
from .runner import run, serve_until_signalled
from .server import EngineServer, EngineServerError, Sender
from .tracing import EngineTracing, trace_headers

__all__ = [
    "Capabilities",
    "CurveConfig",
    "Done",
    "EngineError",
    "EngineHandler",
    "EngineServer",
    "EngineServerConfig",
    "EngineServerError",
    "EngineState",
    "EngineTracing",
    "Operation",
    "Sender",
    "Stager",
    "can_stage",
    "clip",
    "run",
    "serve_until_signalled",
    "trace_headers",
]
