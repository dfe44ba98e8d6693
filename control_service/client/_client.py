"""The trainer-side async client of the control plane.

An RL loop calls ``pause -> update_weights -> resume`` thousands of times, so the surface is
small and every call has the same shape: typed arguments in, an `Outcome` (the per-engine final
`Result` messages) out, and a `ControlError` (code, message, per-engine failures) on failure::

    async with ControlClient(ClientConfig(target="127.0.0.1:50051", retries=3)) as client:
        await client.pause("abort")
        await client.update_weights("/ckpt/step-100", "100")
        await client.resume()

Every mutating call carries a request id. The client makes one (uuid4 hex) when the caller does
not, before the first attempt, so that retrying an UNAVAILABLE call sends the same id: the server
then attaches to the operation already running or replays its recorded outcome, and a retry can
never pause or load twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Self, TypeVar

import grpc

from control_service.client import _utils as utils
from control_service.client._config import ClientConfig, StepTimeouts, TlsConfig
from control_service.client._utils import EventCallback, new_request_id
from control_service.errors import ControlError, EngineFailure, invalid, status_code
from control_service.gen.control.v1 import control_pb2, control_pb2_grpc
from control_service.protocol import names
from control_service.protocol.names import RESUME_OLD_WEIGHTS
from control_service.protocol.names import PauseMode as PauseModeName
from control_service.protocol.names import RefitPolicy as RefitPolicyName
from control_service.protocol.proto_enums import FAILURE_ACTION_NAMES

WeightsRequest = TypeVar(
    "WeightsRequest", control_pb2.UpdateWeightsRequest, control_pb2.StageWeightsRequest
)

__all__ = [
    "ClientConfig",
    "ControlClient",
    "ControlError",
    "EngineFailure",
    "EventCallback",
    "Outcome",
    "PauseModeName",
    "RefitPolicyName",
    "ServiceStatus",
    "StepTimeouts",
    "TlsConfig",
    "new_request_id",
]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a successful Pause/UpdateWeights/Resume returned.

    results: each engine's final Result (its state after the operation).
    events: every event in arrival order (exact repeats from a retried stream dropped).
    attempts: 1 + the retries it took.
    """

    request_id: str
    results: Mapping[str, control_pb2.Result]
    events: tuple[control_pb2.ControlEvent, ...] = ()
    attempts: int = 1
    # The engines that failed in a call that still succeeded (max_failed_engines): each with
    # its status, the step it failed at and what was done with it (`action`).
    failures: tuple[EngineFailure, ...] = ()

    @property
    def degraded(self) -> bool:
        """It succeeded without some engines (route around `failed_engines`)."""
        return bool(self.failures)

    @property
    def failed_engines(self) -> tuple[str, ...]:
        return tuple(f.engine for f in self.failures)

    def states(self) -> dict[str, control_pb2.EngineState]:
        """Each engine's state after the operation (paused, weight version, in flight, digest);
        for a Refit, failed engines too, where their final probe reached them."""
        return {
            engine: result.state
            for engine, result in self.results.items()
            if result.HasField("state")
        }


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """GetStatus as a mapping engine name -> EngineStatus (reachable, state, error, source,
    leaving), and the engine set's generation: when it differs from the last one seen, engines
    joined or left (an engines file or DNS changed) since."""

    engines: Mapping[str, control_pb2.EngineStatus]
    membership_generation: int = 0

    @classmethod
    def from_response(cls, response: control_pb2.GetStatusResponse) -> ServiceStatus:
        return cls(
            MappingProxyType({status.engine: status for status in response.engines}),
            response.membership_generation,
        )

    @property
    def leaving(self) -> tuple[str, ...]:
        """Engines removed while a call still held them: they take no new calls."""
        return tuple(name for name, status in self.engines.items() if status.leaving)

    @property
    def all_reachable(self) -> bool:
        return all(status.reachable for status in self.engines.values())

    def failures(self) -> dict[str, EngineFailure]:
        """The engines flagged as failed: each one's failed part of the last mutating call that
        reached it (request_id, step, status, action), until a call succeeds on it. Route
        generation around them."""
        return {
            name: failure_of(name, status.failure)
            for name, status in self.engines.items()
            if status.HasField("failure")
        }

    def to_response(self) -> control_pb2.GetStatusResponse:
        """Back to the wire message (for JSON output)."""
        return control_pb2.GetStatusResponse(
            engines=list(self.engines.values()), membership_generation=self.membership_generation
        )


class ControlClient:
    """Async client of control.v1.ControlService; use as ``async with ControlClient(cfg)``.

    The channel is opened on entry (inside the running event loop, as grpc.aio requires) and
    closed on exit. One client may run calls concurrently; the server orders mutations.
    """

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        self._channel: grpc.aio.Channel | None = None
        self._stub: control_pb2_grpc.ControlServiceStub | None = None

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def open(self) -> None:
        """Create the channel (idempotent); connecting happens lazily on the first call."""
        if self._channel is not None:
            return
        options = self.config.options()
        if self.config.tls is None:
            self._channel = grpc.aio.insecure_channel(self.config.target, options=options)
        else:
            credentials = self.config.tls.credentials()
            self._channel = grpc.aio.secure_channel(self.config.target, credentials, options)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel, cancelling calls still open on it."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the channel is connected; UNAVAILABLE ControlError after `timeout_s`."""
        self.open()
        assert self._channel is not None
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
        except TimeoutError:
            raise ControlError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.config.target} not reachable within {timeout_s:g}s",
            ) from None

    async def pause(
        self,
        mode: PauseModeName | None = None,
        *,
        clear_cache: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: EventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Stop the engines serving generation; mode None means the server's default.
        max_failed_engines: how many may fail while the call still succeeds (Outcome.failures
        names them, each left as it reported); 0: every engine must succeed."""
        request = pause_request(mode, clear_cache, request_id, engines, max_failed_engines)
        return await self._mutate(self._rpc("Pause"), request, timeout, on_event)

    async def update_weights(
        self,
        uri: str,
        version: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: EventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Load the checkpoint at `uri` into the (paused) engines, to report as `version`
        (max_failed_engines: as for pause)."""
        request = update_weights_request(uri, version, request_id, engines, max_failed_engines)
        return await self._mutate(self._rpc("UpdateWeights"), request, timeout, on_event)

    async def stage_weights(
        self,
        uri: str,
        version: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: EventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Load the checkpoint at `uri` beside the served weights while the engines keep serving;
        a later update_weights (or refit) of `version` commits it with a swap, not a load.
        Engines without the `stage` capability are refused up front (FAILED_PRECONDITION).
        max_failed_engines: as for pause (a failed engine staged nothing and serves on)."""
        request = stage_weights_request(uri, version, request_id, engines, max_failed_engines)
        return await self._mutate(self._rpc("StageWeights"), request, timeout, on_event)

    async def resume(
        self,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: EventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Let paused engines serve again (KEEP-paused requests continue; max_failed_engines:
        as for pause)."""
        request = resume_request(request_id, engines, max_failed_engines)
        return await self._mutate(self._rpc("Resume"), request, timeout, on_event)

    async def refit(
        self,
        uri: str,
        version: str,
        *,
        mode: PauseModeName | None = None,
        clear_cache: bool = False,
        on_failure: RefitPolicyName = RESUME_OLD_WEIGHTS,
        steps: StepTimeouts | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: EventCallback | None = None,
        stage: bool = False,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Pause -> update_weights -> resume as one call. If a step fails, `on_failure` runs
        (by default the engines resume on their old weights) and ControlError names the step.
        `Outcome.results` holds each engine's final state (the events tagged step "refit"),
        whose `paused_ms` is how long that engine did not generate. `stage`: load while the
        engines serve and pause them only for the swap (engines need the `stage` capability).
        `max_failed_engines`: up to that many engines may fail and the refit still succeeds on
        the others; each failed one leaves the refit at its failed step, gets `on_failure`
        alone, and is named in `Outcome.failures` (step, status, action)."""
        request = refit_request(
            uri, version, mode, clear_cache, on_failure, steps, request_id, engines, stage,
            max_failed_engines,
        )  # fmt: skip
        return await self._mutate(self._rpc("Refit"), request, timeout, on_event)

    async def status(
        self, engines: Iterable[str] = (), *, timeout: float | None = None
    ) -> ServiceStatus:
        """Every (or the named) engine's reachability and state; safe to retry, never queued."""
        request = control_pb2.GetStatusRequest(engines=list(engines))
        deadline = status_deadline(timeout, self.config)
        response = await self._with_retries(
            lambda: self._rpc("GetStatus")(
                request, timeout=deadline, metadata=utils.metadata(self.config.bearer_token)
            )
        )
        return ServiceStatus.from_response(response)

    # ------------------------------------------------------------------------------ internals

    def _rpc(self, name: str) -> Any:
        if self._stub is None:
            raise RuntimeError("ControlClient is not open: use 'async with ControlClient(...)'")
        return getattr(self._stub, name)

    async def _mutate(
        self,
        rpc: Callable[..., Any],
        request: Any,
        timeout: float | None,
        on_event: EventCallback | None,
    ) -> Outcome:
        """Run one streaming call to its end, retrying UNAVAILABLE with the same request."""
        deadline = with_timeout(request, timeout, self.config)
        log = EventLog()

        async def attempt() -> None:
            call = rpc(request, timeout=deadline, metadata=utils.metadata(self.config.bearer_token))
            try:
                async for event in call:
                    if log.add(event):
                        await utils.call_back(on_event, event)
            finally:
                call.cancel()  # no-op once finished; stops the stream if a callback raised

        attempts = await self._with_retries(attempt, count_attempts=True)
        return log.outcome(request.request_id, attempts, method_of(request))

    async def _with_retries(self, attempt: Callable[[], Any], count_attempts: bool = False) -> Any:
        """Await attempt() until it succeeds or fails with anything but a retryable UNAVAILABLE.

        Returns attempt()'s value, or the number of attempts made when `count_attempts`.
        """
        made = 0
        while True:
            made += 1
            try:
                value = await attempt()
            except grpc.aio.AioRpcError as error:
                await asyncio.sleep(retry_delay(error, made, self.config))
            else:
                return made if count_attempts else value


# --------------------------------------------------------------- shared with the sync client
# What a call is, apart from how it waits: the request built from typed arguments, the timeout
# and deadline it carries, the events it collects, and whether a failure is retried. The async
# `ControlClient` and the blocking `SyncControlClient` (_sync.py) both use exactly these.


def pause_request(
    mode: PauseModeName | None,
    clear_cache: bool,
    request_id: str | None,
    engines: Iterable[str],
    max_failed_engines: int = 0,
) -> control_pb2.PauseRequest:
    return control_pb2.PauseRequest(
        request_id=utils.checked_request_id(request_id),
        mode=utils.pause_mode(mode),
        clear_cache=clear_cache,
        engines=list(engines),
        max_failed_engines=utils.failure_budget(max_failed_engines),
    )


def update_weights_request(
    uri: str,
    version: str,
    request_id: str | None,
    engines: Iterable[str],
    max_failed_engines: int = 0,
) -> control_pb2.UpdateWeightsRequest:
    return _weights_request(control_pb2.UpdateWeightsRequest, "update_weights", uri, version,
                            request_id, engines, max_failed_engines)  # fmt: skip


def stage_weights_request(
    uri: str,
    version: str,
    request_id: str | None,
    engines: Iterable[str],
    max_failed_engines: int = 0,
) -> control_pb2.StageWeightsRequest:
    return _weights_request(control_pb2.StageWeightsRequest, "stage_weights", uri, version,
                            request_id, engines, max_failed_engines)  # fmt: skip


def _weights_request(
    message: type[WeightsRequest],
    method: str,
    uri: str,
    version: str,
    request_id: str | None,
    engines: Iterable[str],
    max_failed_engines: int,
) -> WeightsRequest:
    """A checkpoint (uri) and the version it becomes: the same request to load or to stage."""
    if not uri or not version:
        raise invalid(f"{method} needs a non-empty uri and version")
    return message(
        request_id=utils.checked_request_id(request_id),
        uri=uri,
        version=version,
        engines=list(engines),
        max_failed_engines=utils.failure_budget(max_failed_engines),
    )


def resume_request(
    request_id: str | None, engines: Iterable[str], max_failed_engines: int = 0
) -> control_pb2.ResumeRequest:
    return control_pb2.ResumeRequest(
        request_id=utils.checked_request_id(request_id),
        engines=list(engines),
        max_failed_engines=utils.failure_budget(max_failed_engines),
    )


def refit_request(
    uri: str,
    version: str,
    mode: PauseModeName | None,
    clear_cache: bool,
    on_failure: RefitPolicyName,
    steps: StepTimeouts | None,
    request_id: str | None,
    engines: Iterable[str],
    stage: bool = False,
    max_failed_engines: int = 0,
) -> control_pb2.RefitRequest:
    if not uri or not version:
        raise invalid("refit needs a non-empty uri and version")
    request = control_pb2.RefitRequest(
        request_id=utils.checked_request_id(request_id),
        mode=utils.pause_mode(mode),
        clear_cache=clear_cache,
        uri=uri,
        version=version,
        on_failure=utils.refit_policy(on_failure),
        engines=list(engines),
        stage=stage,
        max_failed_engines=utils.failure_budget(max_failed_engines),
    )
    for name, seconds in (steps or StepTimeouts()).items():
        getattr(request, f"{name}_timeout").CopyFrom(utils.duration(seconds))
    return request


def with_timeout(request: Any, timeout: float | None, config: ClientConfig) -> float | None:
    """Put the operation timeout (the call's, else the config's) on `request`; return the
    transport deadline that goes with it."""
    timeout_s = utils.check_timeout(timeout if timeout is not None else config.timeout_s)
    if timeout_s is not None:
        request.timeout.CopyFrom(utils.duration(timeout_s))
    return config.transport_deadline(timeout_s)


def status_deadline(timeout: float | None, config: ClientConfig) -> float:
    return utils.check_timeout(timeout) or config.status_timeout_s


class EventLog:
    """A call's events across its attempts, exact repeats from a replayed stream dropped."""

    def __init__(self) -> None:
        self.events: list[control_pb2.ControlEvent] = []
        self._seen: set[bytes] = set()

    def add(self, event: control_pb2.ControlEvent) -> bool:
        """Keep `event`; False for a repeat (not shown to the caller's callback again)."""
        key = utils.dedupe_key(event)
        if key in self._seen:
            return False
        self._seen.add(key)
        self.events.append(event)
        return True

    def outcome(self, request_id: str, attempts: int, method: str = "") -> Outcome:
        """The call's Outcome. Its failures (a call that tolerated some): a Refit's final
        Results that carry one; for the other calls, each engine's error event (the service
        left it as it reported)."""
        events = self.events
        results = {e.engine: e.result for e in events if e.WhichOneof("event") == "result"}
        failures = [failure_of(engine, r.failure) for engine, r in results.items()
                    if r.HasField("failure")]  # fmt: skip
        if method != names.REFIT:
            failures += [
                EngineFailure(
                    e.engine,
                    status_code(e.error.code),
                    e.error.message,
                    method,
                    names.LEFT_AS_REPORTED,
                )  # fmt: skip
                for e in events
                if e.WhichOneof("event") == "error"
            ]
        return Outcome(
            request_id, MappingProxyType(results), tuple(events), attempts, tuple(failures)
        )


# The call each request type makes, in the words of `names` (a failure's step).
_METHODS: dict[type, str] = {
    control_pb2.PauseRequest: names.PAUSE,
    control_pb2.UpdateWeightsRequest: names.UPDATE_WEIGHTS,
    control_pb2.StageWeightsRequest: names.STAGE_WEIGHTS,
    control_pb2.ResumeRequest: names.RESUME,
    control_pb2.RefitRequest: names.REFIT,
}


def method_of(request: Any) -> str:
    return _METHODS.get(type(request), "")


def failure_of(engine: str, failure: control_pb2.EngineFailure) -> EngineFailure:
    """The proto's EngineFailure as the client's typed one (action as a names.FailureAction)."""
    return EngineFailure(
        engine,
        status_code(failure.code),
        failure.message,
        failure.step,
        FAILURE_ACTION_NAMES.get(failure.action, ""),
        failure.request_id,
    )


def retry_delay(error: grpc.RpcError, made: int, config: ClientConfig) -> float:
    """Seconds to wait before attempt `made` + 1 of a call that failed with `error`; raises
    the call's ControlError when it is not retried (not UNAVAILABLE, or retries used up)."""
    if error.code() != grpc.StatusCode.UNAVAILABLE or made > config.retries:
        raise utils.error_from_rpc(error) from error
    return config.retry_delay_s(made)
