"""The control service under test, in its own process:

    python -m bench._service [--account] NAME=ENDPOINT [NAME=ENDPOINT ...]

Starts `ControlServer` (with the given factories: see bench/_bare.py) with those engine entries on 127.0.0.1:0 (logging at warning), waits for
every engine link to be up, then prints `{"port", "pid", "engines"}`. Commands on stdin, one a
line, each answered by one JSON line:

- `stats`: `rss_kb` (VmRSS from /proc/self/status), `open_slots`, `running` operations, and the
  slot counters summed over the links (`delivered`, `unmatched`) and `sent`, `send_failures`,
  `malformed`; with `--account`, `account_ns`: CPU time by phase of a call (bench/_accounting.py);
- `stop`: the same stats (read while still serving, so open slots mean leaked slots), then a
  graceful stop; the line adds `stopped_open_slots`. The process then exits 0.

SIGTERM (or stdin closing) stops it too.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import tracemalloc
from typing import Any

from bench import _accounting
from bench.procs import die_with_parent, emit, rss_kb
from control_service.cli.aio import run
from control_service.log import configure
from control_service.server import ControlServer
from control_service.server.config import EngineConfig, LinkConfig, ServiceConfig
from control_service.server.tracing import ServerTracing

ENGINES_UP_TIMEOUT_S = 30.0


def stats(server: ControlServer) -> dict[str, Any]:
    links = server.links.values()
    dispatcher = server.dispatcher
    return {
        "rss_kb": rss_kb(),
        "open_slots": server.open_slots,
        "running": len(dispatcher.running) if dispatcher is not None else -1,
        "delivered": sum(link.slots.counters.delivered for link in links),
        "unmatched": sum(link.slots.counters.unmatched for link in links),
        "sent": sum(link.counters.sent for link in links),
        "send_failures": sum(link.counters.send_failures for link in links),
        "malformed": sum(link.counters.malformed for link in links),
        # Python's own allocations, when run with PYTHONTRACEMALLOC=1 (a diagnostic: slow)
        "traced_kb": tracemalloc.get_traced_memory()[0] // 1024 if tracemalloc.is_tracing() else -1,
        "gc_objects": len(gc.get_objects()),
        # CPU time by phase of a call, when run with --account (see bench/_accounting.py)
        "account_ns": _accounting.snapshot(),
    }


async def serve(entries: list[str], link: LinkConfig | None = None, **factories: Any) -> int:
    """`factories`: ControlServer's seams (link_factory, servicer_factory, ...)."""
    configure("warning")
    engines = tuple(EngineConfig.parse(entry) for entry in entries)
    config = ServiceConfig(engines=engines, listen="127.0.0.1:0", link=link or LinkConfig())
    # Traced as `serve` is when the OTEL_* variables say so (the cost of tracing, measured).
    server = ControlServer(config, tracing=ServerTracing.from_env(), **factories)
    port = await server.start()
    up_timeout = max(ENGINES_UP_TIMEOUT_S, len(engines) / 20)  # 4,096 links: ~3 min here
    if not await server.wait_engines_up(up_timeout):
        down = [name for name, link in server.links.items() if not link.up]
        emit(error=f"engines not up within {up_timeout:g}s: {down[:8]}")
        await server.stop(0)
        return 1
    emit(port=port, pid=os.getpid(), engines=[e.name for e in engines])

    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    while True:
        read = asyncio.ensure_future(commands.readline())
        await asyncio.wait((read, stopped), return_when=asyncio.FIRST_COMPLETED)
        if stopped.done():
            read.cancel()
            break
        raw = read.result()
        command = raw.decode().strip()
        if command == "stats":
            emit(**stats(server))
        elif command == "stop" or not raw:  # b"" is end of input
            final = stats(server)
            await server.stop(1.0)
            emit(**final, stopped_open_slots=server.open_slots)
            return 0
        elif command:
            emit(error=f"unknown command {command!r}")
    await server.stop(1.0)
    return 0


if __name__ == "__main__":
    die_with_parent()
    argv = sys.argv[1:]
    factories: dict[str, Any] = {}
    if "--account" in argv:
        argv.remove("--account")
        factories = _accounting.FACTORIES
    link = None
    beat = next((a for a in argv if a.startswith("--heartbeat=")), None)
    if beat is not None:  # --heartbeat=INTERVAL/TIMEOUT[/RATE] (bench.fanout at scale)
        argv.remove(beat)
        values = [float(x) for x in beat.split("=", 1)[1].split("/")]
        rate = values[2] if len(values) > 2 else LinkConfig().heartbeat_rate
        link = LinkConfig(
            heartbeat_ivl_s=values[0], heartbeat_timeout_s=values[1], heartbeat_rate=rate
        )
    if not argv:
        sys.exit(
            "usage: python -m bench._service [--account] [--heartbeat=IVL/TIMEOUT[/RATE]] "
            "NAME=ENDPOINT [NAME=ENDPOINT ...]"
        )
    sys.exit(run(serve(argv, link, **factories)))
