"""A real engine process that speaks the engine protocol (docs/engine-protocol.md).

It is the demo's embedded engine, the tests' peer and the benchmark's peer: a simulated
generation loop (engine.py) as a control_service.engine handler (handler.py), served by that
library's ROUTER (server.py), with test knobs on stdin.
Run it with `python -m engine_stub --bind tcp://127.0.0.1:0`.
"""

from .checkpoint import write_checkpoint
from .engine import Engine, SimConfig
from .handler import Knobs, StubHandler
from .server import Server, ServerConfig, run

__all__ = [
    "Engine",
    "Knobs",
    "Server",
    "ServerConfig",
    "SimConfig",
    "StubHandler",
    "run",
    "write_checkpoint",
]
