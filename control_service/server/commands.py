"""Validation: from a gRPC request to a Command the dispatcher can trust, or INVALID_ARGUMENT.

Everything a caller sends is checked and bounded here, once: the request_id's shape, string
lengths, the timeout, the pause mode, the engine names. The effective deadline is the earliest of
the client's gRPC deadline, the request's timeout (or the server default) and the server maximum.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf.duration_pb2 import Duration

from control_service.errors import ENDED_BY_SERVICE, ControlError, clip, invalid
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import names
from control_service.protocol.proto_enums import PAUSE_MODE_NAMES, REFIT_POLICY_NAMES
from control_service.server.config import ServiceConfig
from control_service.server.operations import Command

MAX_URI_CHARS = 4096
MAX_VERSION_CHARS = 256
# An unspecified policy is the documented default.
_POLICIES: dict[int, str] = {
    pb.REFIT_FAILURE_POLICY_UNSPECIFIED: names.RESUME_OLD_WEIGHTS,
    **REFIT_POLICY_NAMES,
}


class EngineSet(Protocol):
    """The engines calls may use now (membership.Membership): read once per call, so a call's
    engine set is fixed when it starts."""

    @property
    def members(self) -> tuple[str, ...]:
        """The engines new calls use, in order of joining."""

    @property
    def known(self) -> frozenset[str]:
        """`members` as a set: the one-engine call's check is one lookup."""

    @property
    def leaving(self) -> Collection[str]:
        """Removed engines whose calls still run: shown by GetStatus, used by no new call."""

    @property
    def sources(self) -> Mapping[str, str]:
        """Engine name -> where it came from ("flag", "file", "dns")."""

    @property
    def generation(self) -> int:
        """Changes to the set so far."""


class FixedEngines:
    """The configured engines, for Commands built without a membership (tools, benchmarks)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.members = tuple(e.name for e in config.engines)
        self.known = frozenset(self.members)
        self.leaving: frozenset[str] = frozenset()
        self.sources = dict.fromkeys(self.members, "flag")
        self.generation = 0


class Commands:
    """Builds Commands for one service configuration and its engine set."""

    def __init__(self, config: ServiceConfig, engines: EngineSet | None = None) -> None:
        self.config = config
        self.membership = FixedEngines(config) if engines is None else engines
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, on first call

    def pause(self, req: pb.PauseRequest, time_remaining: float | None) -> Command:
        rid = request_id(req.request_id)
        mode = self._mode(req.mode) if req.mode else self.config.default_pause_mode
        args = {"mode": mode, "clear_cache": req.clear_cache}
        return self._command(rid, req, names.PAUSE, args, time_remaining)

    def update_weights(self, req: pb.UpdateWeightsRequest, time_remaining: float | None) -> Command:
        return self._weights(req, names.UPDATE_WEIGHTS, time_remaining)

    def stage_weights(self, req: pb.StageWeightsRequest, time_remaining: float | None) -> Command:
        return self._weights(req, names.STAGE_WEIGHTS, time_remaining)

    def _weights(
        self,
        req: pb.UpdateWeightsRequest | pb.StageWeightsRequest,
        method: str,
        time_remaining: float | None,
    ) -> Command:
        """A checkpoint (uri) and the version it becomes: the same rules to load or to stage."""
        rid = request_id(req.request_id)
        _require_text("uri", req.uri, MAX_URI_CHARS)
        _require_text("version", req.version, MAX_VERSION_CHARS)
        args = {"uri": req.uri, "version": req.version}
        return self._command(rid, req, method, args, time_remaining)

    def resume(self, req: pb.ResumeRequest, time_remaining: float | None) -> Command:
        return self._command(request_id(req.request_id), req, names.RESUME, {}, time_remaining)

    def refit(self, req: pb.RefitRequest, time_remaining: float | None) -> Command:
        rid = request_id(req.request_id)
        mode = self._mode(req.mode)
        _require_text("uri", req.uri, MAX_URI_CHARS)
        _require_text("version", req.version, MAX_VERSION_CHARS)
        policy = _POLICIES.get(req.on_failure)
        if policy is None:
            raise invalid(f"on_failure {req.on_failure} is not a RefitFailurePolicy")
        maximum = self.config.max_timeout_s
        steps = {
            f"{name}_timeout_s": _seconds(getattr(req, f"{name}_timeout"), maximum)
            if req.HasField(f"{name}_timeout")
            else None
            for name in ("pause", "update", "resume", "stage")
        }
        args = {
            "mode": mode,
            "clear_cache": req.clear_cache,
            "uri": req.uri,
            "version": req.version,
            "on_failure": policy,
            "stage": req.stage,
            **steps,
            "policy_timeout_s": steps["resume_timeout_s"] or self.config.default_timeout_s,
        }
        return self._command(rid, req, names.REFIT, args, time_remaining)

    def _mode(self, value: int) -> str:
        if value == pb.PAUSE_MODE_UNSPECIFIED:
            return self.config.default_pause_mode
        mode = PAUSE_MODE_NAMES.get(value)
        if mode is None:
            raise invalid(f"mode {value} is not a PauseMode")
        return mode

    def engines(self, requested: Sequence[str]) -> tuple[str, ...]:
        """The named engines in membership order, or every member for an empty list. A name
        that is not a member now (never was, or left) is NOT_FOUND; no members at all is
        UNAVAILABLE (NO_ENGINES): the fleet is empty for now, and clients retry UNAVAILABLE."""
        members = self.membership.members
        if not requested:
            if not members:
                raise ControlError(
                    grpc.StatusCode.UNAVAILABLE,
                    "no engines: the service has none now (the engines file or DNS lists none)",
                    reason="NO_ENGINES",
                )
            return members
        return self._named(requested, members, self.membership.known)

    def status_engines(self, requested: Sequence[str]) -> tuple[str, ...]:
        """GetStatus's engines: as `engines`, but leaving engines count (shown leaving), and no
        engines at all is an empty answer, not an error."""
        leaving = tuple(self.membership.leaving)
        every = self.membership.members + leaving
        if not requested:
            return every
        return self._named(requested, every, self.membership.known.union(leaving))

    def _named(
        self, requested: Sequence[str], members: tuple[str, ...], known: frozenset[str]
    ) -> tuple[str, ...]:
        if len(requested) == 1 and requested[0] in known:
            return (requested[0],)
        for name in requested:
            if not names.is_request_id(name):  # the same rule as a request_id
                raise invalid(f"engine name {clip(name)} must be {names.REQUEST_ID_RULE}")
        unknown = sorted(set(requested) - known)
        if unknown:
            raise ControlError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown engine(s) {_listed(unknown)}; the service has: {_listed(members)}",
                reason="UNKNOWN_ENGINE",
                engines=tuple(unknown),
            )
        if len(set(requested)) != len(requested):
            raise invalid("engines lists a name twice")
        wanted = set(requested)
        return tuple(name for name in members if name in wanted)

    def _command(
        self,
        rid: str,
        req: pb.PauseRequest
        | pb.UpdateWeightsRequest
        | pb.StageWeightsRequest
        | pb.ResumeRequest
        | pb.RefitRequest,
        method: str,
        args: dict[str, Any],
        time_remaining: float | None,
    ) -> Command:
        timeout = req.timeout if req.HasField("timeout") else None
        names = req.engines
        # One configured engine named is the common case: `engines` without the call.
        engines = (
            (names[0],)
            if len(names) == 1 and names[0] in self.membership.known
            else self.engines(names)
        )
        max_failed = _max_failed(getattr(req, "max_failed_engines", 0), len(engines))
        deadline = self.deadline(timeout, time_remaining)
        return Command(rid, method, args, engines, deadline, max_failed)

    def deadline(self, timeout: Duration | None, time_remaining: float | None) -> float:
        c = self.config
        seconds = c.default_timeout_s if timeout is None else _seconds(timeout, c.max_timeout_s)
        if time_remaining is not None:
            if time_remaining <= 0:
                raise ControlError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{ENDED_BY_SERVICE}: the call's deadline passed before it started",
                    reason="DEADLINE",
                )
            seconds = min(seconds, time_remaining)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time() + min(seconds, c.max_timeout_s)


# Generated ids: a random prefix per process and a counter (unique, cheaper than uuid4 per call).
_PREFIX = uuid.uuid4().hex[:12]
_GENERATED = (f"{_PREFIX}-{n}" for n in itertools.count(1))


def _listed(names: Sequence[str], limit: int = 8) -> str:
    """Names for a message: the first `limit`, then how many more."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def request_id(value: str) -> str:
    """The caller's request_id, checked; a generated one when empty."""
    if not value:
        return next(_GENERATED)
    if not names.is_request_id(value):
        raise ControlError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request_id {clip(value)} must be {names.REQUEST_ID_RULE}",
            reason="INVALID_REQUEST_ID",
        )
    return value


def _seconds(timeout: Duration, maximum: float) -> float:
    if not -999_999_999 <= timeout.nanos <= 999_999_999:
        raise invalid("timeout.nanos must be within +-999,999,999")
    seconds = timeout.seconds + timeout.nanos / 1e9
    if not 0 < seconds <= maximum:
        raise invalid(f"timeout must be > 0s and <= {maximum:g}s, got {seconds:g}s")
    return seconds


def _max_failed(value: int, engines: int) -> int:
    """A failure budget the call can meet: at least one of its engines must succeed."""
    if value and value >= engines:
        raise invalid(
            f"max_failed_engines {value} cannot be met: the call has {engines} "
            f"engine{'s' if engines != 1 else ''}, so at most {engines - 1} may fail"
        )
    return value


def _require_text(name: str, value: str, limit: int) -> None:
    if not value:
        raise invalid(f"{name} must not be empty")
    if len(value) > limit:
        raise invalid(f"{name} exceeds {limit} characters")
