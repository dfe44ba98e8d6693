"""Running an engine server as a process: until SIGTERM/SIGINT, with an exit code."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from .config import EngineServerConfig
from .handler import EngineHandler
from .server import EngineServer, EngineServerError

log = logging.getLogger("control_service.engine")


async def serve_until_signalled(
    server: EngineServer, ready: Callable[[str], None] | None = None
) -> int:
    """Serve until SIGTERM or SIGINT; 0, or 2 when the server cannot start."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before `ready`: a prompt SIGTERM exits 0
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.serve(stop, ready)
    except EngineServerError as err:
        log.error("%s", err)
        return 2
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def run(
    handler: EngineHandler,
    config: EngineServerConfig,
    ready: Callable[[str], None] | None = None,
) -> int:
    """`sys.exit(run(MyHandler(), EngineServerConfig(bind="tcp://0.0.0.0:5555")))`."""
    return asyncio.run(serve_until_signalled(EngineServer(handler, config), ready))
