"""The live engine set: which engines new calls may use, and the link to each engine.

Engines come from three sources: the flags (fixed for the process), an engines file
(engines_file.py) and a DNS name (engines_dns.py). A source always states its whole set
(`update`), and membership applies the difference from what that source said before:

- a new engine gets a link at once and joins the calls that name no engines from then on;
- a removed engine leaves at once: no new call uses it, and a call that names it gets NOT_FOUND
  (UNKNOWN_ENGINE). Its link stays while a call holds it, for at most `leave_grace_s`; then the
  link closes and what is still in flight there ends UNAVAILABLE;
- an engine whose endpoint changed under the same name (a pod back on a new IP) is replaced at
  once: its old address is gone, so a call still on it ends UNAVAILABLE.

A call's engine set is fixed when it starts: commands.py reads `members` once per call, and the
dispatcher addresses links by name, so a link that closes mid-call fails only that engine's part.
Each change increments `generation`, is logged once (one line: who joined, left, moved) and
counted (`changes`). A name is owned by the first source that claims it; another source claiming
it is refused, logged once per name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from enum import StrEnum

import structlog
import zmq

from control_service.log import few_names
from control_service.server.config import EngineConfig, LinkConfig
from control_service.server.engine_link import EngineLink

log = structlog.get_logger("control_service.server.membership")

LinkMaker = Callable[[EngineConfig, LinkConfig], EngineLink]
ADDED, REMOVED, MOVED = "added", "removed", "moved"


class Source(StrEnum):
    """Where an engine came from (GetStatus shows it: EngineStatus.source)."""

    FLAG = "flag"
    FILE = "file"
    DNS = "dns"


class Membership:
    """The engine set and its links. `links` holds every open link, leaving engines included:
    the dispatcher, the probes and the metrics read that same dict."""

    def __init__(
        self,
        link_config: LinkConfig,
        make_link: LinkMaker,
        *,
        leave_grace_s: float,
        capacity: int,
        on_change: Callable[[], None],
    ) -> None:
        self.links: dict[str, EngineLink] = {}
        self.sources: dict[str, Source] = {}
        # Removed engines whose link still serves their calls -> the timer that ends the grace.
        self.leaving: dict[str, asyncio.TimerHandle | None] = {}
        self.members: tuple[str, ...] = ()  # the engines new calls use, in order of joining
        self.known: frozenset[str] = frozenset()
        self.generation = 0
        self.changes: dict[str, int] = {ADDED: 0, REMOVED: 0, MOVED: 0}
        self.capacity = capacity
        # Set by the server once the dispatcher exists: whether a running call holds an engine,
        # and what to forget when an engine's link closes for good.
        self.holds: Callable[[str], bool] = _holds_nothing
        self.on_drop: Callable[[str], None] = _ignore
        self._base = link_config
        self.link_config = link_config
        self._make_link = make_link
        self._leave_grace_s = leave_grace_s
        self._on_change = on_change
        self._context: zmq.Context | None = None
        self._refused: set[str] = set()  # names refused (conflict or capacity), logged once
        self._unstarted: list[EngineLink] = []  # joined in this update: started after rescaling

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, context: zmq.Context) -> None:
        """Connect the links made so far; links made later connect as they join."""
        self._context = context
        self._unstarted = []
        for link in list(self.links.values()):
            link.start(context)

    def close(self) -> None:
        """Close every link (shutdown): what is still open fails with UNAVAILABLE."""
        for name in list(self.links):
            self._close(name, "service shutting down")

    # --------------------------------------------------------------------------------- change

    def update(self, source: Source, engines: Sequence[EngineConfig]) -> bool:
        """Make `source`'s engines exactly `engines`. True when the set changed."""
        wanted = {e.name: e for e in engines}
        removed = [
            name
            for name, owner in self.sources.items()
            if owner is source and name not in self.leaving and name not in wanted
        ]
        for name in removed:
            self._leave(name)
        added: list[str] = []
        moved: list[str] = []
        for name, engine in wanted.items():
            change = self._claim(source, engine)
            if change == ADDED:
                added.append(name)
            elif change == MOVED:
                moved.append(name)
        if not (added or removed or moved):
            return False
        self._changed(source, added, removed, moved)
        self._start_joined()
        return True

    def _claim(self, source: Source, engine: EngineConfig) -> str | None:
        """`source` lists `engine`: what that changes (ADDED, MOVED or None)."""
        name = engine.name
        owner, link = self.sources.get(name), self.links.get(name)
        if owner is not None and owner is not source and name not in self.leaving:
            self._refuse(name, f"the name is already an engine from the {owner} source")
            return None
        if link is not None and link.endpoint == engine.endpoint:
            if name not in self.leaving:
                return None
            self._stay(name, source)  # back before it finished leaving: keep its link
            return ADDED
        if link is None and len(self.links) >= self.capacity:
            self._refuse(name, f"the service holds {self.capacity} engine links at most")
            return None
        change = ADDED if link is None or name in self.leaving else MOVED
        if link is not None:
            self._close(name, "the engine moved to another address")
        self._join(engine, source)
        return change

    def _join(self, engine: EngineConfig, source: Source) -> None:
        link = self._make_link(engine, self.link_config)
        self.links[engine.name] = link
        self.sources[engine.name] = source
        self._refused.discard(engine.name)
        self._unstarted.append(link)

    def _start_joined(self) -> None:
        """Connect the links that joined, with the heartbeats scaled for the new count."""
        joined, self._unstarted = self._unstarted, []
        if self._context is not None:
            for link in joined:
                link.start(self._context)

    def _stay(self, name: str, source: Source) -> None:
        timer = self.leaving.pop(name)
        if timer is not None:
            timer.cancel()
        self.sources[name] = source

    def _leave(self, name: str) -> None:
        """No new calls from now; the link stays while a call holds the engine, up to the grace."""
        if not self.holds(name):
            self._close(name, "the engine left the fleet")
            return
        loop = asyncio.get_running_loop()
        self.leaving[name] = loop.call_later(self._leave_grace_s, self._grace_over, name)

    def released(self, name: str) -> None:
        """A call let `name` go (the dispatcher's on_release): a leaving engine may close now.
        Later, not inside the dispatcher's bookkeeping that told us."""
        if name in self.leaving:
            asyncio.get_running_loop().call_soon(self._finish_leaving, name)

    def _finish_leaving(self, name: str) -> None:
        if name in self.leaving and not self.holds(name):
            self._close(name, "the engine left the fleet")
            self._on_change()

    def _grace_over(self, name: str) -> None:
        self.leaving[name] = None  # this timer has fired: nothing to cancel
        self._close(name, f"the engine left the fleet; its calls did not finish within the "
                          f"leave grace ({self._leave_grace_s:g}s)")  # fmt: skip
        self._on_change()

    def _close(self, name: str, reason: str) -> None:
        link = self.links.pop(name)
        del self.sources[name]
        timer = self.leaving.pop(name, None)
        if timer is not None:
            timer.cancel()
        link.close(reason)
        self.on_drop(name)

    def _refuse(self, name: str, why: str) -> None:
        if name not in self._refused:
            self._refused.add(name)
            log.warning("engine not added", engine=name, reason=why)

    def _changed(
        self, source: Source, added: list[str], removed: list[str], moved: list[str]
    ) -> None:
        self.generation += 1
        self.members = tuple(name for name in self.links if name not in self.leaving)
        self.known = frozenset(self.members)
        for change, names in ((ADDED, added), (REMOVED, removed), (MOVED, moved)):
            self.changes[change] += len(names)
        log.info("engines changed", source=str(source), generation=self.generation,
                 added=few_names(added), removed=few_names(removed), moved=few_names(moved),
                 engines=len(self.members), leaving=len(self.leaving))  # fmt: skip
        self._rescale()
        self._on_change()

    def _rescale(self) -> None:
        """Heartbeats scaled to the links now open (LinkConfig.for_links). A new link uses it
        from its first socket; a link already open keeps its socket's settings until it makes
        a new one (libzmq applies heartbeat options at connect), so all converge on reconnect."""
        config = self._base.for_links(len(self.links))
        if config == self.link_config:
            return
        self.link_config = config
        log.info("heartbeats scaled to the engines", engines=len(self.links),
                 interval_s=round(config.heartbeat_ivl_s, 3),
                 timeout_s=round(config.heartbeat_timeout_s, 3))  # fmt: skip
        for link in self.links.values():
            link.config = config

    # ---------------------------------------------------------------------------------- views

    def counts(self) -> dict[str, int]:
        """Engines by state: up and down among the members, and leaving (a metric reads it)."""
        links = self.links  # read from the metrics thread too: one lookup per name
        up = sum(1 for name in self.members if getattr(links.get(name), "up", False))
        return {"up": up, "down": len(self.members) - up, "leaving": len(self.leaving)}


def _holds_nothing(name: str) -> bool:
    return False


def _ignore(name: str) -> None:
    return None
