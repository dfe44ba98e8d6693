"""The engines file, watched: a change is applied without a restart.

Polled rather than watched with inotify: a Kubernetes ConfigMap volume updates by swapping the
`..data` symlink to a new directory (the file's own path never changes), which inotify on the
file misses and a poll of `os.stat` (which follows the links) sees as a new inode. A change is
any difference in (device, inode, mtime, size); SIGHUP reloads at once, changed or not (the
polling and the wake-up are sources.py's: `check` is one look).
A file that cannot be read or parsed (config.load_engines: bounded in bytes and engines) keeps
the last good set and is logged once, until the file changes again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from control_service.server.config import (
    ConfigError,
    EngineConfig,
    load_engines,
    load_engines_beside,
)

log = structlog.get_logger("control_service.server.engines_file")

Signature = tuple[int, int, int, int]


class EnginesFile:
    """Reads `path` when it changes and hands its engines to `apply` (Membership.update)."""

    def __init__(
        self, path: Path, interval_s: float, apply: Callable[[list[EngineConfig]], object]
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self._apply = apply
        self._seen: Signature | None = None  # the file as last read, good or bad
        self.reloads = 0  # times the file was read after a change or SIGHUP (tests wait on it)

    def load_initial(self, fixed: Sequence[EngineConfig] = ()) -> list[EngineConfig]:
        """The engines at start: a bad file here, or one naming an engine of `fixed` (the
        flags'), is a configuration error (ConfigError)."""
        self._seen = self._signature()
        return load_engines_beside(self.path, fixed)

    async def check(self, force: bool = False) -> None:
        """Reload if the file changed (or `force`); a bad file keeps the last good set."""
        signature = self._signature()
        if signature == self._seen and not force:
            return
        self._seen = signature
        try:
            engines = await asyncio.to_thread(load_engines, self.path)
        except ConfigError as err:
            log.warning("engines file not applied: keeping the engines it listed before",
                        path=str(self.path), error=err.message)  # fmt: skip
        else:
            self._apply(engines)
        self.reloads += 1

    def _signature(self) -> Signature | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
