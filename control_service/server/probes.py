"""What the service learns of each engine by asking it: status probes, capabilities, health.

Apart from the dispatcher's admission and slot-then-send path because it is another duty: a
status probe is never queued behind a mutation, uses the links' own probe slots (not the calls'
slot budget), and what its replies say is kept here: each engine's capabilities (so a call some
engine cannot honour is refused before anything is sent, `_check_capable`), whether an engine
is down behind a link that is up (`engine_down`), and the version each engine is expected to
serve (`expected_versions`, for skew reports). `Dispatcher` is a `StatusProbes`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from control_service.errors import ControlError, EngineFailure
from control_service.protocol import names, wire
from control_service.server.config import ServiceConfig
from control_service.server.engine_link import EngineLink
from control_service.server.metrics import Metrics
from control_service.server.operations import Command


@dataclass(frozen=True, slots=True)
class EngineReport:
    engine: str
    reachable: bool
    state: dict[str, Any] | None
    error: str
    expected_version: str = ""
    capabilities: dict[str, Any] | None = None
    # Its failed part of the last mutating call that reached it (request_id set), if any.
    failure: EngineFailure | None = None

    @property
    def skewed(self) -> bool:
        """Reports a version other than the one last requested of it."""
        return bool(
            self.expected_version
            and self.state is not None
            and self.state["weight_version"] != self.expected_version
        )


class StatusProbes:
    """Probes the engines' status and keeps what the replies teach (see the module's doc).

    The subclass owns the links, the config and the metrics, and sets them before calling
    `__init__`; this class only reads them.
    """

    config: ServiceConfig
    links: dict[str, EngineLink]
    metrics: Metrics | None

    def __init__(self) -> None:
        # engine -> the version of the last update to it that succeeded on at least one of its
        # engines (a Refit's update step included), for version-skew reports.
        self.expected_versions: dict[str, str] = {}
        # engine -> what it reported it can do, from status replies since its link came up.
        self.capabilities: dict[str, dict[str, Any]] = {}
        # engine -> why it is down though its link is up: its status said UNAVAILABLE (an
        # adapter whose engine is unreachable). Readiness and GetStatus show it down.
        self.engine_down: dict[str, str] = {}
        # engine -> its failed part of the last mutating call that reached it (GetStatus flags
        # it so a trainer can route around it); removed when a call succeeds on it.
        self.failed: dict[str, EngineFailure] = {}
        # Called when an engine's health (engine_down) changes: the server republishes health.
        self.on_engine_change: Callable[[], None] | None = None
        self._ids = itertools.count(1)

    def forget(self, engine: str) -> None:
        """The engine's link went down: what it said of itself may not hold for what comes back."""
        self.capabilities.pop(engine, None)
        self.engine_down.pop(engine, None)

    def _check_capable(self, command: Command) -> None:
        """Refuse, before anything is sent to any engine, a call that some engine has said it
        cannot honour, so a fleet is never left half-paused. An engine whose capabilities are
        not known yet (its link came up less than a status round trip ago) is not refused here:
        that engine refuses an unknown mode itself."""
        args = command.args
        mode, clear_cache = args.get("mode"), args.get("clear_cache", False)
        stages = command.method == names.STAGE_WEIGHTS or args.get("stage", False)
        lacking = []
        for name in command.engines:
            caps = self.capabilities.get(name)
            if caps is None:
                continue
            missing = []
            if mode is not None and mode not in caps["pause_modes"]:
                missing.append(f"pause mode {mode.upper()}")
            if clear_cache and caps.get("clear_cache") is False:
                missing.append("clear_cache")
            if stages and caps.get(names.CAP_STAGE) is not True:
                missing.append("stage (staged weights)")
            if missing:
                lacking.append(f"{name} lacks {' and '.join(missing)}")
        if lacking:
            raise ControlError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{len(lacking)} of {len(command.engines)} engines cannot honour this "
                f"{command.method}; nothing was sent: {'; '.join(lacking)}",
            )

    # --------------------------------------------------------------------------------- status

    async def status(self, engines: tuple[str, ...]) -> list[EngineReport]:
        """Ask every engine for its state at once; never queued behind a mutation."""
        reports = await asyncio.gather(*(self._status_one(name) for name in engines))
        expected = self.expected_versions
        return [
            dataclasses.replace(
                r,
                expected_version=expected.get(r.engine, ""),
                capabilities=self.capabilities.get(r.engine),
                failure=self.failed.get(r.engine),
            )
            for r in reports
        ]

    async def _probe(
        self, engines: tuple[str, ...]
    ) -> dict[str, tuple[dict[str, Any] | None, str]]:
        return {r.engine: (r.state, r.error) for r in await self.status(engines)}

    async def _status_one(self, name: str) -> EngineReport:
        link = self.links.get(name)
        if link is None:  # it left the fleet since the probe was asked for
            return EngineReport(name, False, None, "the engine left the fleet")
        if not link.up:
            return EngineReport(name, False, None, link.down_reason)
        rid = f"status/{next(self._ids)}"  # '/' is not allowed in callers' ids: no collision
        waiter = _OneReply()
        timeout = self.config.status_timeout_s
        try:
            link.probes.open(rid, waiter)  # the probes' own bound, not the calls' slot budget
            sent = time.perf_counter()
            link.send(wire.Request(rid, names.STATUS, {}, timeout))
            reply = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
            if self.metrics is not None:
                self.metrics.engine_rtt.labels(name).observe(time.perf_counter() - sent)
        except ControlError as err:
            return EngineReport(name, link.up, None, err.message)
        except TimeoutError:
            return EngineReport(name, True, None, f"no status reply within {timeout:g}s")
        finally:
            link.probes.close(rid)  # on every exit, cancellation of the caller included
        if reply.kind == wire.ERROR:
            why = f"{reply.data['code']}: {reply.data['message']}"
            down = reply.data["code"] == "UNAVAILABLE"  # the engine behind its adapter is down
            self._engine_health(name, why if down else "")
            return EngineReport(name, not down, None, why)
        if link.up:  # a link lost meanwhile forgot the engine: do not learn it back
            self.capabilities[name] = wire.reported_capabilities(reply.data)
            self._engine_health(name, "")
        return EngineReport(name, True, reply.data["state"], "")

    def _engine_health(self, name: str, down: str) -> None:
        was = self.engine_down.get(name, "")
        if down:
            self.engine_down[name] = down
        else:
            self.engine_down.pop(name, None)
        if bool(was) != bool(down) and self.on_engine_change is not None:
            self.on_engine_change()


class _OneReply:
    """A slot sink that waits for one terminal reply (status probes)."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()

    def on_reply(self, reply: wire.Reply) -> None:
        if reply.terminal and not self.future.done():
            self.future.set_result(reply)

    def on_lost(self, error: ControlError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
