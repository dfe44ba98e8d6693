"""The engine side of the engine protocol, as a library (docs/engine-protocol.md).

An engine implements `EngineHandler` (capabilities, status, pause, update_weights, resume) and
serves it with `EngineServer(handler, EngineServerConfig(bind=...)).serve()`, or `run(...)` as a
process. The server does the protocol's duties; the handler does only what the engine does.
This package imports only control_service.protocol, the standard library and pyzmq: never the
service, never grpc.
"""

from .config import CurveConfig, EngineServerConfig
from .handler import Capabilities, Done, EngineError, EngineHandler, EngineState, Operation, clip
from .runner import run, serve_until_signalled
from .server import EngineServer, EngineServerError, Sender

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
    "Operation",
    "Sender",
    "clip",
    "run",
    "serve_until_signalled",
]
