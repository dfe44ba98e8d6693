"""Shared fixtures. Every service started here is checked at teardown: no slot may be left open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_service.gen.control.v1 import control_pb2_grpc
from control_service.server import ControlServer, LinkFactory
from control_service.server.config import EngineConfig, LinkConfig, ServiceConfig
from control_service.server.engine_link import EngineLink
from control_service.server.tracing import ServerTracing
from engine_stub.checkpoint import write_checkpoint
from tests.fakes.process import AdapterProcess, FakeEngine
from tests.harness import Service, StartService
from tests.stub_process import EngineClient, StubProcess

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the folder it lives in (see pyproject's markers)."""
    for item in items:
        tier = next((part for part in item.path.parts if part in TIERS), None)
        if tier is not None:
            item.add_marker(tier)


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    started: list[Service] = []

    async def start(
        engines: dict[str, str] | list[str],
        link_factory: LinkFactory = EngineLink,
        wait_up: bool = True,
        link: LinkConfig | None = None,
        tracing: ServerTracing | None = None,
        **overrides: Any,
    ) -> Service:
        if isinstance(engines, list):
            engines = {f"e{i}": ep for i, ep in enumerate(engines)}
        # No status probes of its own unless a test asks (they would add frames to exact counts).
        overrides.setdefault("engine_probe_interval_s", None)
        config = ServiceConfig(
            engines=tuple(EngineConfig(n, ep) for n, ep in engines.items()),
            listen="127.0.0.1:0",
            link=link or LinkConfig(),
            **overrides,
        )
        server = ControlServer(config, link_factory=link_factory, tracing=tracing)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        service = Service(server, port, channel, control_pb2_grpc.ControlServiceStub(channel))
        started.append(service)
        if wait_up:
            assert await server.wait_engines_up(10.0), "engines did not come up within 10 s"
        return service

    yield start
    for service in started:
        await service.channel.close()
        await service.server.stop(grace=1.0)
        assert service.server.open_slots == 0, "a reply slot leaked"


@pytest.fixture
def start_stub() -> Iterator[Callable[..., StubProcess]]:
    """Start real `python -m engine_stub` processes; all are stopped at teardown."""
    stubs: list[StubProcess] = []

    def start(*args: str) -> StubProcess:
        stub = StubProcess()
        stubs.append(stub)
        stub.start(*args)
        return stub

    yield start
    for stub in stubs:
        stub.__exit__(None, None, None)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Callable[[int], tuple[str, int]]:
    """checkpoint(seed) -> (directory, total bytes) of a small safetensors checkpoint."""

    def make(seed: int) -> tuple[str, int]:
        directory = tmp_path / f"ckpt-{seed}"
        return str(directory), write_checkpoint(directory, seed=seed)

    return make


@pytest.fixture
def fake_engine() -> Iterator[Callable[..., FakeEngine]]:
    """fake_engine("vllm", *flags) -> a started HTTP fake; each is checked (no duplicate resume
    seen) and stopped at teardown."""
    fakes: list[FakeEngine] = []

    def start(kind: str, *args: str) -> FakeEngine:
        fake = FakeEngine(kind)
        fakes.append(fake)
        fake.start(*args)
        return fake

    yield start
    for fake in fakes:
        fake.stop()


@pytest.fixture
def start_adapter() -> Iterator[Callable[..., AdapterProcess]]:
    """start_adapter("vllm", url, *flags) -> a running `python -m control_service.adapters`."""
    adapters: list[AdapterProcess] = []

    def start(kind: str, url: str, *args: str) -> AdapterProcess:
        adapter = AdapterProcess()
        adapters.append(adapter)
        adapter.start(kind, url, *args)
        return adapter

    yield start
    for adapter in adapters:
        adapter.stop()


Launch = Callable[..., tuple[StubProcess, EngineClient]]


@pytest.fixture
def launch() -> Iterator[Launch]:
    """launch(*flags) -> (stub, client): a started stub and a DEALER connected to it."""
    opened: list[StubProcess | EngineClient] = []

    def start(*args: str) -> tuple[StubProcess, EngineClient]:
        stub = StubProcess()
        opened.append(stub)
        client = EngineClient(stub.start(*args))
        opened.append(client)
        return stub, client

    yield start
    for thing in reversed(opened):
        thing.__exit__(None, None, None)
