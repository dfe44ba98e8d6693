"""A scrape of /metrics after real calls shows the right counts."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Callable

import pytest
from google.protobuf.duration_pb2 import Duration
from prometheus_client.parser import text_string_to_metric_families

from control_service.errors import ControlError
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.server.metrics import CallStats
from tests.harness import StartService, eventually, free_port
from tests.stub_process import StubProcess


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    samples = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(get)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_scrape_after_calls(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub()
    port = free_port()
    # Probes only at link-up, so the status round trips are that one and the GetStatus below.
    service = await start_service(
        {"e0": stub.endpoint}, metrics_port=port, engine_probe_interval_s=0
    )
    await eventually(lambda: "e0" in service.server.dispatcher.capabilities)
    await service.events("Pause", pb.PauseRequest(), timeout=10)
    await service.events("Pause", pb.PauseRequest(), timeout=10)
    await service.failed("UpdateWeights", pb.UpdateWeightsRequest(uri="/no", version="1"))
    await service.failed("Resume", pb.ResumeRequest(request_id="bad id"))
    await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    stub.knob(garbage=True)
    stub.knob(reply_delay=0.5)
    await service.failed("Resume", pb.ResumeRequest(timeout=Duration(nanos=100_000_000)))
    link = service.server.links["e0"]
    await eventually(lambda: link.slots.counters.unmatched == 1)

    m = await scrape(port)
    assert m[("control_calls_total", (("method", "Pause"), ("status", "OK")))] == 2
    assert m[("control_calls_total", (("method", "UpdateWeights"), ("status", "NOT_FOUND")))] == 1
    assert m[("control_calls_total", (("method", "Resume"), ("status", "INVALID_ARGUMENT")))] == 1
    assert m[("control_calls_total", (("method", "Resume"), ("status", "DEADLINE_EXCEEDED")))] == 1
    assert m[("control_calls_total", (("method", "GetStatus"), ("status", "OK")))] == 1
    pause_ok = (("method", "Pause"), ("status", "OK"))
    assert m[("control_call_duration_seconds_count", pause_ok)] == 2
    assert m[("control_call_duration_seconds_bucket", (("le", "+Inf"), *pause_ok))] == 2
    assert 0 < m[("control_call_duration_seconds_sum", pause_ok)] < 20
    update_failed = (("method", "UpdateWeights"), ("status", "NOT_FOUND"))
    assert m[("control_call_duration_seconds_count", update_failed)] == 1
    assert m[("control_open_slots", ())] == 0
    assert m[("control_engine_up", (("engine", "e0"),))] == 1
    assert m[("control_engine_malformed_frames_total", (("engine", "e0"),))] == 1
    assert m[("control_engine_late_replies_total", (("engine", "e0"),))] == 1
    assert m[("control_engine_rtt_seconds_count", (("engine", "e0"),))] == 2

    await service.server.stop(grace=1.0)
    with pytest.raises(OSError):  # the stopped server no longer holds the metrics port
        await scrape(port)


async def test_metrics_port_in_use_fails_the_start(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with pytest.raises(ControlError, match=r"cannot serve metrics on 127\.0\.0\.1:"):
            await start_service({"e0": stub.endpoint}, metrics_port=taken.getsockname()[1])


def test_call_stats_buckets_are_cumulative_and_bounds_inclusive() -> None:
    stats = CallStats()
    for seconds in (0.001, 0.0011, 0.3, 1000.0):  # on a bound, just over it, mid, past the last
        stats.add("Pause", "OK", seconds)
    stats.add("Pause", "ABORTED", 0.002)
    calls, latency = list(stats.families())
    counts = {tuple(s.labels.values()): s.value for s in calls.samples}
    assert counts == {("Pause", "OK"): 4, ("Pause", "ABORTED"): 1}
    buckets = {
        (s.labels["status"], s.labels["le"]): s.value
        for s in latency.samples
        if s.name.endswith("_bucket")
    }
    assert buckets["OK", "0.001"] == 1 and buckets["OK", "0.0025"] == 2
    assert buckets["OK", "0.5"] == 3 and buckets["OK", "300.0"] == 3
    assert buckets["OK", "+Inf"] == 4 and buckets["ABORTED", "0.0025"] == 1
    sums = {s.labels["status"]: s.value for s in latency.samples if s.name.endswith("_sum")}
    assert sums == {"OK": pytest.approx(1000.3021), "ABORTED": pytest.approx(0.002)}


async def test_metrics_listen_on_the_grpc_host_by_default_or_where_told(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    """Not on every interface with no way to choose: by default on the gRPC listen host
    (127.0.0.1 here), or on --metrics-listen HOST:PORT."""
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint}, metrics_port=free_port())
    address = service.server.metrics.address
    assert address is not None and address[0] == "127.0.0.1"
    port = free_port()
    told = await start_service({"e0": stub.endpoint}, metrics_listen=f"127.0.0.1:{port}")
    assert told.server.metrics.address == ("127.0.0.1", port)
    assert ("control_engine_up", (("engine", "e0"),)) in await scrape(port)


@pytest.mark.parametrize("bad", ["9090", "host:", ":9090", "host:0", "host:99999"])
def test_a_bad_metrics_address_is_a_configuration_error(bad: str) -> None:
    from control_service.server.config import ConfigError, EngineConfig, ServiceConfig

    with pytest.raises(ConfigError, match="metrics address"):
        ServiceConfig(engines=(EngineConfig("e0", "tcp://127.0.0.1:1"),), metrics_listen=bad)
