"""The service: the gRPC edge, reply slots, the engine links and everything between.

`ControlServer` assembles it (server.py); `serve` runs it until SIGTERM. A call's path:
servicer.py (thin gRPC edge) -> commands.py (validation) -> dispatcher.py (admission, slot opened
before send, deadlines, retries) -> engine_link.py (one ZMQ DEALER per engine) and back through
operations.py (one call as a value). This package may import client-free shared code
(protocol, errors, gen) but never the CLI.
"""

from control_service.server.server import (
    LIVENESS,
    ControlServer,
    DispatcherFactory,
    LinkFactory,
    ServicerFactory,
    serve,
)

__all__ = [
    "LIVENESS",
    "ControlServer",
    "DispatcherFactory",
    "LinkFactory",
    "ServicerFactory",
    "serve",
]
