"""A real engine process that speaks the engine protocol (docs/engine-protocol.md).

It is the demo's embedded engine, the tests' peer and the benchmark's peer: a simulated
generation loop (engine.py) behind a ZMQ ROUTER (server.py), with test knobs on stdin.
Run it with `python -m engine_stub --bind tcp://127.0.0.1:0`.
"""

from .checkpoint import write_checkpoint
from .engine import Engine, OpError, SimConfig
from .server import Knobs, Server, ServerConfig, run

__all__ = [
    "Engine",
    "Knobs",
    "OpError",
    "Server",
    "ServerConfig",
    "SimConfig",
    "run",
    "write_checkpoint",
]
