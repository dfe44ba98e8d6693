"""The watched sources of engines, feeding the membership: the engines file and the DNS name.

The flags' engines are fixed and given to the membership once; these two run as tasks for the
life of the service, each on its own interval, and `reload` (SIGHUP) wakes both at once.
"""

from __future__ import annotations

import asyncio

import structlog

from control_service.server.config import ConfigError, ServiceConfig
from control_service.server.engines_dns import EnginesDns
from control_service.server.engines_file import EnginesFile
from control_service.server.membership import Membership, Source

log = structlog.get_logger("control_service.server.sources")


class EngineSources:
    """The engines file (read once here: a bad one is a ConfigError at start) and the DNS name
    (first resolved when started), each applied to `membership` as its own source."""

    def __init__(self, config: ServiceConfig, membership: Membership) -> None:
        self.file: EnginesFile | None = None
        self.dns: EnginesDns | None = None
        self._wake = {Source.FILE: asyncio.Event(), Source.DNS: asyncio.Event()}
        self._tasks: list[asyncio.Task[None]] = []
        if config.engines_file is not None:
            self.file = EnginesFile(
                config.engines_file, config.engines_file_interval_s,
                lambda engines: membership.update(Source.FILE, engines),
            )  # fmt: skip
            listed = self.file.load_initial()
            clash = sorted({e.name for e in listed} & membership.known)
            if clash:
                raise ConfigError(f"{config.engines_file}: engine names also given as flags: "
                                  f"{', '.join(clash)}", "engines_file")  # fmt: skip
            membership.update(Source.FILE, listed)
        if config.engines_dns:
            self.dns = EnginesDns(
                config.engines_dns, config.engines_dns_interval_s,
                lambda engines: membership.update(Source.DNS, engines), config.dns_server,
            )  # fmt: skip

    def start(self) -> None:
        if self.file is not None:
            self._tasks.append(asyncio.create_task(self.file.run(self._wake[Source.FILE])))
        if self.dns is not None:
            self._tasks.append(asyncio.create_task(self.dns.run(self._wake[Source.DNS])))

    def reload(self) -> None:
        """Re-read the file and re-resolve the name now (SIGHUP)."""
        log.info("reloading the engines", file=self.file is not None, dns=self.dns is not None)
        for event in self._wake.values():
            event.set()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
