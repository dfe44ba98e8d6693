"""The watched sources of engines, feeding the membership: the engines file and the DNS name.

The flags' engines are fixed and given to the membership once; these two run as tasks for the
life of the service, each on its own interval, and `reload` (SIGHUP) wakes both at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from control_service.server.config import EngineConfig, ServiceConfig
from control_service.server.engines_dns import EnginesDns
from control_service.server.engines_file import EnginesFile
from control_service.server.membership import Membership, Source

log = structlog.get_logger("control_service.server.sources")


class EngineSources:
    """The engines file (read at once: a bad one, or one naming a flag's engine, is a
    ConfigError at start) and the DNS name (first resolved when started), each applied to the
    membership as its own source once `attach`ed."""

    def __init__(self, config: ServiceConfig) -> None:
        self._config = config
        self.file: EnginesFile | None = None
        self.dns: EnginesDns | None = None
        self.initial: list[EngineConfig] = []  # the file's engines at start
        self._wake = {Source.FILE: asyncio.Event(), Source.DNS: asyncio.Event()}
        self._tasks: list[asyncio.Task[None]] = []
        if config.engines_file is not None:
            self.file = EnginesFile(
                config.engines_file, config.engines_file_interval_s, self._apply_file
            )
            self.initial = self.file.load_initial(config.engines)
        if config.engines_dns:
            self.dns = EnginesDns(
                config.engines_dns, config.engines_dns_interval_s, self._apply_dns,
                config.dns_server,
            )  # fmt: skip
        self._membership: Membership | None = None

    def attach(self, membership: Membership) -> None:
        """From now on the sources feed `membership`; the file's engines join it now."""
        self._membership = membership
        if self.file is not None:
            membership.update(Source.FILE, self.initial)

    def _apply_file(self, engines: list[EngineConfig]) -> None:
        if self._membership is not None:
            self._membership.update(Source.FILE, engines)

    def _apply_dns(self, engines: list[EngineConfig]) -> None:
        if self._membership is not None:
            self._membership.update(Source.DNS, engines)

    def start(self) -> None:
        if self.file is not None:
            self._watch(Source.FILE, self.file.interval_s, self.file.check)
        if self.dns is not None:
            dns = self.dns
            self._watch(Source.DNS, dns.interval_s, lambda _reload: dns.refresh())

    def _watch(
        self, source: Source, interval_s: float, check: Callable[[bool], Awaitable[None]]
    ) -> None:
        """`check` now, then every `interval_s`, and at once on `reload` (told it was one)."""
        wake = self._wake[source]

        async def watching() -> None:
            while True:
                woken = wake.is_set()
                wake.clear()
                await check(woken)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), interval_s)

        self._tasks.append(asyncio.create_task(watching()))

    def reload(self) -> None:
        """Re-read the file and re-resolve the name now (SIGHUP)."""
        log.info("reloading the engines", file=self.file is not None, dns=self.dns is not None)
        for event in self._wake.values():
            event.set()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
