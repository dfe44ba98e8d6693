"""The trainer-side client against a scripted in-process gRPC servicer (tests/fake_control.py), so
that retries, deadlines, error details and callbacks can be provoked exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_service.client import ClientConfig, ControlClient, Outcome, TlsConfig
from control_service.errors import ControlError, EngineFailure
from control_service.gen.control.v1 import control_pb2 as pb
from tests.fake_control import ENGINES, STATE, FakeControl, serve_fake


@pytest.fixture
async def fake() -> AsyncIterator[FakeControl]:
    async for servicer in serve_fake():
        yield servicer


def _config(fake: FakeControl, **overrides: Any) -> ClientConfig:
    fast = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.01}
    return ClientConfig(target=fake.target, **{**fast, **overrides})


async def test_pause_sends_typed_request_and_returns_each_engines_result(fake: FakeControl) -> None:
    got: list[pb.ControlEvent] = []
    async with ControlClient(_config(fake, bearer_token="s3cret")) as client:
        outcome = await client.pause("wait", clear_cache=True, on_event=got.append)
    request = fake.seen[0].request
    assert request.mode == pb.PAUSE_MODE_WAIT and request.clear_cache
    assert len(request.request_id) == 32 and outcome.request_id == request.request_id
    assert not request.HasField("timeout")  # no timeout configured: the server's default
    assert fake.seen[0].metadata["authorization"] == "Bearer s3cret"
    assert set(outcome.results) == set(ENGINES) and all(s.paused for s in outcome.states().values())
    assert list(outcome.events) == got and len(got) == 3 and outcome.attempts == 1


async def test_timeout_goes_on_the_wire_and_the_deadline_has_a_margin(fake: FakeControl) -> None:
    async with ControlClient(_config(fake, timeout_s=30.0, deadline_margin_s=5.0)) as client:
        await client.update_weights("/ckpt", "3", engines=["e1"], timeout=2.5)
    seen = fake.seen[0]
    assert seen.request.timeout.ToNanoseconds() == 2_500_000_000
    assert seen.request.engines == ["e1"] and seen.request.version == "3"
    assert seen.time_remaining is not None and 7.0 < seen.time_remaining < 8.0  # 2.5 + 5
    assert ClientConfig(deadline_margin_s=5.0).transport_deadline(None) is None


async def test_unavailable_is_retried_with_the_same_request_id(fake: FakeControl) -> None:
    fake.unavailable_first = 2
    calls: list[pb.ControlEvent] = []

    async def on_event(event: pb.ControlEvent) -> None:  # async callbacks are awaited
        calls.append(event)

    async with ControlClient(_config(fake, retries=2)) as client:
        outcome = await client.resume(request_id="step-7.resume", on_event=on_event)
    assert [s.request.request_id for s in fake.seen] == ["step-7.resume"] * 3
    assert outcome.attempts == 3
    # the Accepted event each attempt repeated is delivered once
    assert [e.WhichOneof("event") for e in calls] == ["accepted", "result", "result"]
    assert not any(s.paused for s in outcome.states().values())


async def test_retries_exhausted_raise_unavailable(fake: FakeControl) -> None:
    fake.unavailable_first = 5
    async with ControlClient(_config(fake, retries=1)) as client:
        with pytest.raises(ControlError) as info:
            await client.pause()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert isinstance(info.value.__cause__, grpc.aio.AioRpcError)
    assert len(fake.seen) == 2


async def test_engine_failures_come_back_from_error_info_and_are_not_retried(
    fake: FakeControl,
) -> None:
    fake.fail_with = ControlError(
        grpc.StatusCode.NOT_FOUND,
        "1 of 2 engines failed",
        (EngineFailure("e1", grpc.StatusCode.NOT_FOUND, "no *.safetensors"),),
    )
    async with ControlClient(_config(fake, retries=3)) as client:
        with pytest.raises(ControlError) as info:
            await client.update_weights("/missing", "1")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.message == "1 of 2 engines failed"
    assert info.value.failures == fake.fail_with.failures
    assert len(fake.seen) == 1


async def test_a_failing_callback_cancels_the_call(fake: FakeControl) -> None:
    fake.hang = True

    def explode(event: pb.ControlEvent) -> None:
        raise RuntimeError("progress bar broke")

    async with ControlClient(_config(fake)) as client:
        with pytest.raises(RuntimeError, match="progress bar broke"):
            await client.pause(on_event=explode)
        await asyncio.wait_for(fake.cancelled.wait(), 10)


async def test_status_is_a_mapping_and_is_retried(fake: FakeControl) -> None:
    fake.unavailable_first = 1
    async with ControlClient(_config(fake, retries=1)) as client:
        status = await client.status(["e0", "e1"])
    assert fake.seen[-1].request.engines == ["e0", "e1"]
    assert status.engines["e0"].state.weight_version == "7"
    assert not status.engines["e1"].reachable and not status.all_reachable


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda c: c.pause("nap"), "pause mode"),  # type: ignore[arg-type]
        (lambda c: c.pause(request_id="has space"), "request id"),
        (lambda c: c.resume(timeout=0), "timeout"),
        (lambda c: c.update_weights("", "1"), "uri"),
    ],
)
async def test_bad_arguments_fail_locally(fake: FakeControl, call: Any, reason: str) -> None:
    async with ControlClient(_config(fake)) as client:
        with pytest.raises(ControlError, match=reason) as info:
            await call(client)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and fake.seen == []


def test_client_config_validates_and_backoff_is_capped() -> None:
    with pytest.raises(ControlError):
        ClientConfig(retries=-1)
    with pytest.raises(ControlError):
        ClientConfig(timeout_s=0)
    with pytest.raises(ControlError):
        TlsConfig(cert_chain=Path("c.pem"))
    options = dict(ClientConfig(channel_options=(("grpc.keepalive_time_ms", 1),)).options())
    assert options["grpc.keepalive_time_ms"] == 1  # the caller's options win
    backoff = ClientConfig(retry_backoff_s=0.2, retry_backoff_max_s=1.0)
    assert [backoff.retry_delay_s(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 1.0]


async def test_client_used_without_entering_says_so() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await ControlClient().resume()


def test_outcome_states_is_per_engine() -> None:
    outcome = Outcome("r", {"e0": pb.Result(state=STATE)})
    assert outcome.states() == {"e0": STATE}
