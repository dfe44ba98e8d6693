"""The blocking client, for training loops that are plain synchronous code (and Ray actors).

    with SyncControlClient(ClientConfig(target="127.0.0.1:50051")) as control:
        outcome = control.refit("/ckpt/step-100", "100", on_event=print)

Same methods, arguments, results (`Outcome`, `ServiceStatus`) and errors (`ControlError`) as
the async `ControlClient`, and the same request building, retry rule and event log (imported
from _client.py, not copied). It runs on grpc's own blocking channel and stubs rather than an
event loop in a thread: no loop to own, nothing to clash with a caller that has one of its own
(Ray's async actors, Jupyter), calls from several threads at once are safe (a grpc channel is
thread-safe), and Ctrl-C during a call cancels it at the server like a dropped stream.
`on_event` is a plain function called for each new event as it arrives (progress bars).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

import grpc

from control_service.client import _utils as utils
from control_service.client._client import (
    EventLog,
    Outcome,
    PauseModeName,
    RefitPolicyName,
    ServiceStatus,
    method_of,
    pause_request,
    refit_request,
    resume_request,
    retry_delay,
    stage_weights_request,
    status_deadline,
    update_weights_request,
    with_timeout,
)
from control_service.client._config import ClientConfig, StepTimeouts
from control_service.errors import ControlError
from control_service.gen.control.v1 import control_pb2, control_pb2_grpc

__all__ = ["SyncControlClient", "SyncEventCallback"]

SyncEventCallback = Callable[[control_pb2.ControlEvent], object]


class SyncControlClient:
    """Blocking client of control.v1.ControlService; use as ``with SyncControlClient(cfg)``
    (or call `close()`). The channel connects lazily, on the first call."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig()
        self._channel: grpc.Channel | None = None
        self._stub: control_pb2_grpc.ControlServiceStub | None = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create the channel (idempotent)."""
        if self._channel is not None:
            return
        options = self.config.options()
        if self.config.tls is None:
            self._channel = grpc.insecure_channel(self.config.target, options=options)
        else:
            credentials = self.config.tls.credentials()
            self._channel = grpc.secure_channel(self.config.target, credentials, options)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel, cancelling calls still open on it."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the channel is connected; UNAVAILABLE ControlError after `timeout_s`."""
        self.open()
        assert self._channel is not None
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise ControlError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self.config.target} not reachable within {timeout_s:g}s",
            ) from None

    def pause(
        self,
        mode: PauseModeName | None = None,
        *,
        clear_cache: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: SyncEventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Stop the engines serving generation; mode None means the server's default
        (max_failed_engines: see ControlClient.pause)."""
        request = pause_request(mode, clear_cache, request_id, engines, max_failed_engines)
        return self._mutate(self._rpc("Pause"), request, timeout, on_event)

    def update_weights(
        self,
        uri: str,
        version: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: SyncEventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Load the checkpoint at `uri` into the (paused) engines, to report as `version`."""
        request = update_weights_request(uri, version, request_id, engines, max_failed_engines)
        return self._mutate(self._rpc("UpdateWeights"), request, timeout, on_event)

    def stage_weights(
        self,
        uri: str,
        version: str,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: SyncEventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Load `uri` beside the served weights while serving (see ControlClient.stage_weights)."""
        request = stage_weights_request(uri, version, request_id, engines, max_failed_engines)
        return self._mutate(self._rpc("StageWeights"), request, timeout, on_event)

    def resume(
        self,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: SyncEventCallback | None = None,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Let paused engines serve again (KEEP-paused requests continue)."""
        request = resume_request(request_id, engines, max_failed_engines)
        return self._mutate(self._rpc("Resume"), request, timeout, on_event)

    def refit(
        self,
        uri: str,
        version: str,
        *,
        mode: PauseModeName | None = None,
        clear_cache: bool = False,
        on_failure: RefitPolicyName = "resume_old_weights",
        steps: StepTimeouts | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        engines: Iterable[str] = (),
        on_event: SyncEventCallback | None = None,
        stage: bool = False,
        max_failed_engines: int = 0,
    ) -> Outcome:
        """Pause -> update_weights -> resume as one call (see ControlClient.refit)."""
        request = refit_request(
            uri, version, mode, clear_cache, on_failure, steps, request_id, engines, stage,
            max_failed_engines,
        )  # fmt: skip
        return self._mutate(self._rpc("Refit"), request, timeout, on_event)

    def status(self, engines: Iterable[str] = (), *, timeout: float | None = None) -> ServiceStatus:
        """Every (or the named) engine's reachability and state; safe to retry, never queued."""
        request = control_pb2.GetStatusRequest(engines=list(engines))
        deadline = status_deadline(timeout, self.config)
        metadata = utils.metadata(self.config.bearer_token)
        rpc = self._rpc("GetStatus")
        response = self._with_retries(lambda: rpc(request, timeout=deadline, metadata=metadata))
        return ServiceStatus.from_response(response)

    # ------------------------------------------------------------------------------ internals

    def _rpc(self, name: str) -> Any:
        if self._stub is None:
            raise RuntimeError("SyncControlClient is not open: use 'with SyncControlClient(...)'")
        return getattr(self._stub, name)

    def _mutate(
        self,
        rpc: Callable[..., Any],
        request: Any,
        timeout: float | None,
        on_event: SyncEventCallback | None,
    ) -> Outcome:
        """Run one streaming call to its end, retrying UNAVAILABLE with the same request."""
        deadline = with_timeout(request, timeout, self.config)
        log = EventLog()
        metadata = utils.metadata(self.config.bearer_token)

        def attempt() -> None:
            call = rpc(request, timeout=deadline, metadata=metadata)
            try:
                for event in call:
                    if log.add(event) and on_event is not None:
                        on_event(event)
            finally:
                call.cancel()  # no-op once finished; stops the stream on Ctrl-C or a raise

        attempts = self._with_retries(attempt, count_attempts=True)
        return log.outcome(request.request_id, attempts, method_of(request))

    def _with_retries(self, attempt: Callable[[], Any], count_attempts: bool = False) -> Any:
        """attempt() until it succeeds or fails with anything but a retryable UNAVAILABLE."""
        made = 0
        while True:
            made += 1
            try:
                value = attempt()
            except grpc.RpcError as error:
                time.sleep(retry_delay(error, made, self.config))
            else:
                return made if count_attempts else value
