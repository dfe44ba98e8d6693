"""Engines that come and go: a watched engines file (a ConfigMap's atomic symlink swap), DNS
(a real dnslib server on loopback UDP whose records change between lookups), a removed engine's
in-flight call, NOT_FOUND for it by name, NO_ENGINES and readiness for an empty fleet.
Real service, real engine_stub processes."""

from __future__ import annotations

import asyncio
import os
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from control_service.client import ServiceStatus
from control_service.gen.control.v1 import control_pb2 as pb
from tests.dns_zone import DnsZone
from tests.harness import Service, StartService, eventually, eventually_async, free_port
from tests.stub_process import StubProcess

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ConfigMapDir:
    """A folder laid out as Kubernetes mounts a ConfigMap: engines.txt -> ..data/engines.txt,
    ..data -> ..<version>/; an update writes a new version and swaps ..data atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = 0
        (root / "engines.txt").symlink_to("..data/engines.txt")

    @property
    def path(self) -> Path:
        return self.root / "engines.txt"

    def publish(self, text: str) -> None:
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir()
        (version / "engines.txt").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")  # rename(2): atomic, as kubelet does it


async def reloaded(service: Service, act: Callable[[], object]) -> None:
    """Do `act`, then wait (bounded) until the engines file has been read again."""
    watcher = service.server.sources.file
    assert watcher is not None
    before = watcher.reloads
    act()
    await eventually(lambda: watcher.reloads > before, timeout=10)


async def resolved(service: Service) -> None:
    """Ask for a DNS lookup now (what SIGHUP does) and wait (bounded) until it has finished."""
    watcher = service.server.sources.dns
    assert watcher is not None
    service.server.reload()
    # Not any lookup that ends: one in flight began before the records changed. Lookups run
    # one at a time, so the one this reload asks for ends when `resolutions` passes `begun`.
    begun = watcher.lookups
    await eventually(lambda: watcher.resolutions > begun, timeout=10)


async def status(service: Service, *engines: str) -> pb.GetStatusResponse:
    return await service.stub.GetStatus(pb.GetStatusRequest(engines=engines), timeout=10)


async def paused_on(service: Service, **kw: object) -> set[str]:
    events = await service.events("Pause", pb.PauseRequest(**kw), timeout=10)  # type: ignore[arg-type]
    await service.events("Resume", pb.ResumeRequest(), timeout=10)
    return {e.engine for e in events if e.HasField("result")}


async def health(service: Service) -> int:
    stub = health_pb2_grpc.HealthStub(service.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the service's real /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def reason(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    from google.rpc import error_details_pb2

    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason


@pytest.fixture
def configmap(tmp_path: Path) -> ConfigMapDir:
    root = tmp_path / "cm"
    root.mkdir()
    return ConfigMapDir(root)


# --------------------------------------------------------------------------- engines file


async def test_a_configmap_swap_adds_and_removes_engines(
    start_service: StartService,
    start_stub: Callable[..., StubProcess],
    configmap: ConfigMapDir,
) -> None:
    a, b = start_stub(), start_stub()
    configmap.publish(f"a={a.endpoint}\n")
    service = await start_service({}, engines_file=configmap.path, engines_file_interval_s=0.05)
    first = await status(service)
    assert [(e.engine, e.source) for e in first.engines] == [("a", pb.ENGINE_SOURCE_FILE)]
    assert await paused_on(service) == {"a"}

    await reloaded(service, lambda: configmap.publish(f"a={a.endpoint}\nb={b.endpoint}\n"))
    assert await service.server.wait_engines_up(10)
    second = await status(service)
    assert [e.engine for e in second.engines] == ["a", "b"]
    assert second.membership_generation == first.membership_generation + 1
    assert await paused_on(service) == {"a", "b"}, "a new engine joins calls naming none"

    await reloaded(service, lambda: configmap.publish(f"b={b.endpoint}\n"))
    assert [e.engine for e in (await status(service)).engines] == ["b"]
    assert await paused_on(service) == {"b"}
    assert "a" not in service.server.links, "an idle removed engine's link closes at once"


async def test_a_bad_file_keeps_the_last_good_set(
    start_service: StartService,
    start_stub: Callable[..., StubProcess],
    configmap: ConfigMapDir,
) -> None:
    a = start_stub()
    configmap.publish(f"a={a.endpoint}\n")
    service = await start_service({}, engines_file=configmap.path, engines_file_interval_s=0.05)
    generation = service.server.membership.generation
    await reloaded(service, lambda: configmap.publish("a=http://nope\n"))
    await reloaded(service, lambda: configmap.publish("# nothing\n"))
    assert service.server.membership.generation == generation
    assert await paused_on(service) == {"a"}


async def test_a_removed_engine_finishes_its_call_and_is_not_found_by_name(
    start_service: StartService,
    start_stub: Callable[..., StubProcess],
    configmap: ConfigMapDir,
) -> None:
    a, b = start_stub(), start_stub("--reply-delay", "2.0")
    configmap.publish(f"a={a.endpoint}\nb={b.endpoint}\n")
    port = free_port()
    service = await start_service(
        {}, engines_file=configmap.path, engines_file_interval_s=0.05, metrics_port=port
    )
    running = asyncio.ensure_future(
        service.events("Pause", pb.PauseRequest(request_id="on-b", engines=["b"]), timeout=20)
    )
    await asyncio.to_thread(b.wait_event, lambda e: e.get("request_id") == "on-b", 10.0)

    await reloaded(service, lambda: configmap.publish(f"a={a.endpoint}\n"))
    exported = await asyncio.to_thread(samples, port)
    assert exported["control_engines", (("state", "leaving"),)] == 1
    assert exported["control_engines", (("state", "up"),)] == 1
    assert exported["control_membership_changes_total", (("change", "removed"),)] == 1
    assert exported["control_membership_generation", ()] == 2
    response = await status(service)
    shown = {e.engine: e.leaving for e in response.engines}
    assert shown == {"a": False, "b": True}, "GetStatus shows the engine leaving"
    seen = ServiceStatus.from_response(response)  # what a trainer's client gets
    assert (seen.leaving, seen.membership_generation) == (("b",), 2)
    err, _ = await service.failed("Pause", pb.PauseRequest(engines=["b"]), timeout=10)
    assert (err.code(), reason(err)) == (Code.NOT_FOUND, "UNKNOWN_ENGINE")
    assert await paused_on(service, engines=["a"]) == {"a"}
    assert await paused_on(service) == {"a"}, "a leaving engine gets no new calls"

    events = await running
    assert events[-1].result.state.paused, "its call in flight finished"
    await eventually(lambda: "b" not in service.server.links, timeout=10)
    assert service.server.open_slots == 0


async def test_a_call_outliving_the_leave_grace_ends_unavailable(
    start_service: StartService,
    start_stub: Callable[..., StubProcess],
    configmap: ConfigMapDir,
) -> None:
    a, b = start_stub(), start_stub("--silent")
    configmap.publish(f"a={a.endpoint}\nb={b.endpoint}\n")
    service = await start_service(
        {}, engines_file=configmap.path, engines_file_interval_s=0.05, engine_leave_grace_s=0.3
    )
    running = asyncio.ensure_future(
        service.failed("Pause", pb.PauseRequest(request_id="stuck", engines=["b"]), timeout=30)
    )
    await asyncio.to_thread(b.wait_event, lambda e: e.get("request_id") == "stuck", 10.0)
    await reloaded(service, lambda: configmap.publish(f"a={a.endpoint}\n"))
    err, _ = await asyncio.wait_for(running, 10)
    assert err.code() == Code.UNAVAILABLE and "leave grace" in err.details()
    assert "b" not in service.server.links and service.server.open_slots == 0


# ------------------------------------------------------------------------------------ DNS


@pytest.fixture
def zone() -> Iterator[DnsZone]:
    with DnsZone() as zone:
        yield zone


def on_address(start_stub: Callable[..., StubProcess], host: str, port: int) -> StubProcess:
    return start_stub("--bind", f"tcp://{host}:{port}")


async def test_dns_records_are_the_engines(
    start_service: StartService, start_stub: Callable[..., StubProcess], zone: DnsZone
) -> None:
    first = start_stub("--bind", "tcp://127.0.0.2:0")
    port = int(first.endpoint.rsplit(":", 1)[1])
    second = on_address(start_stub, "127.0.0.3", port)
    zone.set_engines("engines.test", {"vllm-0": "127.0.0.2"}, port)
    service = await start_service(
        {}, wait_up=False, engines_dns=f"engines.test:{port}",
        dns_server=f"127.0.0.1:{zone.port}", engines_dns_interval_s=60,
    )  # fmt: skip
    await resolved(service)
    assert await service.server.wait_engines_up(10)
    shown = (await status(service)).engines
    assert [(e.engine, e.source) for e in shown] == [("vllm-0", pb.ENGINE_SOURCE_DNS)]
    assert await paused_on(service) == {"vllm-0"}, "named by the pod hostname (SRV)"

    # A pod added without SRV: named by its address; records changed between lookups.
    zone.set_engines("engines.test", {"vllm-0": "127.0.0.2", "x": "127.0.0.3"}, port, srv=False)
    await resolved(service)
    assert await service.server.wait_engines_up(10)
    assert await paused_on(service) == {"127.0.0.2", "127.0.0.3"}
    generation = (await status(service)).membership_generation

    zone.failing = True  # SERVFAIL: the last set stands
    await resolved(service)
    assert (await status(service)).membership_generation == generation
    assert await paused_on(service) == {"127.0.0.2", "127.0.0.3"}
    assert second.alive


async def test_an_empty_fleet_fails_no_engines_and_is_not_ready(
    start_service: StartService, start_stub: Callable[..., StubProcess], zone: DnsZone
) -> None:
    stub = start_stub("--bind", "tcp://127.0.0.2:0")
    port = int(stub.endpoint.rsplit(":", 1)[1])
    zone.set_engines("engines.test", {"vllm-0": "127.0.0.2"}, port)
    service = await start_service(
        {}, wait_up=False, engines_dns=f"engines.test:{port}",
        dns_server=f"127.0.0.1:{zone.port}", engines_dns_interval_s=60,
    )  # fmt: skip
    await resolved(service)
    assert await service.server.wait_engines_up(10)
    await eventually_async(lambda: health(service), SERVING, timeout=10)

    zone.set_engines("engines.test", {}, port)  # the name has no address now: no pod ready
    await resolved(service)
    err, _ = await service.failed("Pause", pb.PauseRequest(), timeout=10)
    assert (err.code(), reason(err)) == (Code.UNAVAILABLE, "NO_ENGINES")
    assert list((await status(service)).engines) == []
    await eventually_async(lambda: health(service), NOT_SERVING, timeout=10)


async def test_ready_min_engines_keeps_a_fleet_serving_with_one_engine_down(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    a, b = start_stub(), start_stub()
    service = await start_service({"a": a.endpoint, "b": b.endpoint}, ready_min_engines=1)
    await eventually(service.server.ready, timeout=10)
    b.kill()
    await eventually(lambda: not service.server.links["b"].up, timeout=10)
    assert service.server.ready()
    await eventually_async(lambda: health(service), SERVING, timeout=10)
    a.kill()
    await eventually(lambda: not service.server.links["a"].up, timeout=10)
    await eventually_async(lambda: health(service), NOT_SERVING, timeout=10)


async def test_a_large_fleet_resolves_over_tcp_with_its_hostnames(zone: DnsZone) -> None:
    """256 pods: too large for a UDP answer, so the resolver asks again over TCP; every
    engine is named by its pod."""
    from control_service.server.engines_dns import EnginesDns

    pods = {f"vllm-{i}": f"10.1.{i // 250}.{i % 250 + 1}" for i in range(256)}
    zone.set_engines("engines.test", pods, 5560)
    found: list[list[object]] = []
    dns = EnginesDns("engines.test:5560", 5.0, found.append, f"127.0.0.1:{zone.port}")
    engines = await dns.resolve()
    assert len(engines) == 256 and zone.tcp_queries > 0, "fetched again over TCP"
    assert {e.name: e.endpoint for e in engines} == {
        name: f"tcp://{address}:5560" for name, address in pods.items()
    }


async def test_a_failed_srv_lookup_renames_no_engine(zone: DnsZone) -> None:
    """SRV failing (a server error, or an answer past 64 KiB) keeps the names SRV gave; a pod
    that appears meanwhile is named by its address."""
    from control_service.server.engines_dns import EnginesDns

    zone.set_engines("engines.test", {"vllm-0": "10.0.0.1"}, 5560)
    dns = EnginesDns("engines.test:5560", 5.0, print, f"127.0.0.1:{zone.port}")
    assert [e.name for e in await dns.resolve()] == ["vllm-0"]
    zone.failing_types = {"SRV"}
    zone.set_engines("engines.test", {"vllm-0": "10.0.0.1", "vllm-1": "10.0.0.2"}, 5560)
    assert [e.name for e in await dns.resolve()] == ["10.0.0.2", "vllm-0"]
    zone.failing_types = set()
    assert [e.name for e in await dns.resolve()] == ["vllm-0", "vllm-1"]


async def test_an_engine_removed_during_a_refit_fails_only_its_part(
    start_service: StartService,
    start_stub: Callable[..., StubProcess],
    configmap: ConfigMapDir,
    checkpoint: Callable[[int], tuple[str, int]],
) -> None:
    """b leaves while its update loads (grace 0): its part ends UNAVAILABLE, the later steps
    skip it (no link: 'left the fleet'), and the refit ends OK on a within max_failed_engines."""
    a, b = start_stub(), start_stub("--load-interval", "5")
    configmap.publish(f"a={a.endpoint}\nb={b.endpoint}\n")
    service = await start_service(
        {}, engines_file=configmap.path, engines_file_interval_s=0.05, engine_leave_grace_s=0
    )
    uri, _ = checkpoint(1)
    request = pb.RefitRequest(request_id="r", uri=uri, version="v1", max_failed_engines=1)
    refit = asyncio.ensure_future(service.events("Refit", request, timeout=30))
    await asyncio.to_thread(b.wait_event, lambda e: e.get("method") == "update_weights", 10.0)
    await reloaded(service, lambda: configmap.publish(f"a={a.endpoint}\n"))
    events = await asyncio.wait_for(refit, 30)
    final = {e.engine: e.result for e in events if e.HasField("result") and e.step == "refit"}
    assert final["a"].state.weight_version == "v1" and not final["a"].HasField("failure")
    assert final["b"].failure.code == "UNAVAILABLE"
    await eventually(lambda: "b" not in service.server.links, timeout=10)
    assert service.server.open_slots == 0
