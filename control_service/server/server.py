"""Assembles the service: engine links, dispatcher, servicer, health, reflection; and stops it.

Engines come and go (membership.py): the flags' engines are fixed; an engines file
(engines_file.py) and a DNS name (engines_dns.py) are watched, and SIGHUP re-reads both at once.
Health: the overall service "" and control.v1.ControlService are SERVING only while enough
engines are up: every engine by default (`ready_min_engines` 0), or at least that many of them
(a fleet where one sick replica must not take the service out of its Kubernetes Service); an
engine whose status says it is unreachable (an adapter whose engine is down) counts as down, and
no engines at all is NOT_SERVING, so a readiness probe (Kubernetes' gRPC probe, grpcurl) sees
engine loss at once. Engines are asked for
their status when their link comes up and every `engine_probe_interval_s`: that is also how the
service learns their capabilities (probes.py: StatusProbes._check_capable).
"liveness" is SERVING from start to shutdown whatever the engines do: a gRPC liveness probe on it
proves the event loop answers, without restarting the sidecar because its engine is down.
Shutdown: health goes NOT_SERVING, new calls are refused, running ones get the grace period to
finish, then end with UNAVAILABLE; no slot is left open.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control_service.errors import shutting_down, unavailable
from control_service.gen.control.v1 import control_pb2, control_pb2_grpc
from control_service.log import few_names
from control_service.server.auth import BearerTokenInterceptor
from control_service.server.capacity import link_context, link_room
from control_service.server.commands import Commands
from control_service.server.config import (
    MAX_ENGINES,
    EngineConfig,
    LinkConfig,
    SecurityConfig,
    ServiceConfig,
)
from control_service.server.dispatcher import Dispatcher
from control_service.server.engine_link import EngineLink
from control_service.server.membership import Membership, Source
from control_service.server.metrics import Metrics
from control_service.server.servicer import ControlServicer
from control_service.server.slots import SlotBudget
from control_service.server.sources import EngineSources
from control_service.server.tracing import ServerTracing, log_setup

log = structlog.get_logger("control_service.server")

# After the drain, how long handlers get to write their final status before gRPC cancels them.
_STATUS_FLUSH_S = 1.0
SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name
LIVENESS = "liveness"  # a health service name for liveness probes: up while the process serves
LinkFactory = Callable[
    [EngineConfig, LinkConfig, SlotBudget, Callable[[EngineLink], None]], EngineLink
]
DispatcherFactory = Callable[[ServiceConfig, dict[str, EngineLink], Metrics], Dispatcher]
ServicerFactory = Callable[[Dispatcher, Commands, Metrics], ControlServicer]


class ControlServer:
    """The service. The factories are its seams: the defaults are the product; a test or the
    benchmark passes subclasses to observe or replace one part (a link whose engine answers
    inside `transmit`, a servicer whose Pause is the bare transport, timers around phases)."""

    def __init__(
        self,
        config: ServiceConfig,
        link_factory: LinkFactory = EngineLink,
        *,
        dispatcher_factory: DispatcherFactory = Dispatcher,
        servicer_factory: ServicerFactory = ControlServicer,
        tracing: ServerTracing | None = None,
    ) -> None:
        self.config = config
        self.tracing = tracing  # None: no traces (server/tracing.py: ServerTracing.from_env)
        self._dispatcher_factory = dispatcher_factory
        self._servicer_factory = servicer_factory
        # First, before anything is made or logged: the engines file as it is now (a bad one is
        # a ConfigError), and whether the engines at start fit in this process (a ConfigError
        # that names the limits). A fleet that may grow gets the room this process has; engines
        # past it are refused, and logged.
        self.sources = EngineSources(config)
        initial = len(config.engines) + len(self.sources.initial)
        room = max(initial, link_room(MAX_ENGINES)) if config.dynamic else initial
        self._zmq = link_context(room)
        self.budget = SlotBudget(config.max_open_slots)
        self._health_dirty = asyncio.Event()
        self._links_changed = asyncio.Event()
        self._probe_now = asyncio.Event()
        self.membership = Membership(
            config.link,
            lambda engine, link: link_factory(engine, link, self.budget, self._on_link_change),
            leave_grace_s=config.engine_leave_grace_s,
            capacity=room,
            on_change=self._on_membership_change,
        )
        self.links = self.membership.links  # every open link, by engine name (the same dict)
        self.membership.update(Source.FLAG, config.engines)
        self.sources.attach(self.membership)  # the file's engines join; DNS once started
        self.dispatcher: Dispatcher | None = None
        self.metrics = Metrics(self.links, self.budget, self.membership)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._stopping = False

    def reload(self) -> None:
        """Re-read the engines file and re-resolve the engines DNS name now (SIGHUP)."""
        self.sources.reload()

    @property
    def open_slots(self) -> int:
        return self.budget.open

    async def start(self) -> int:
        """Bind, connect to the engines, serve. Returns the bound port."""
        c = self.config
        self.dispatcher = self._dispatcher_factory(c, self.links, self.metrics)
        self.dispatcher.on_engine_change = self._health_dirty.set
        self.dispatcher.on_release = self.membership.released
        self.membership.holds = self.dispatcher.holds
        self.membership.on_drop = self.dispatcher.drop
        self.dispatcher.tracing = self.tracing
        token = c.security.token()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.tracing is not None:  # first: a call refused by auth is traced too
            interceptors.append(self.tracing.interceptor())
        if token:
            interceptors.append(BearerTokenInterceptor(token, c.security.auth_exempt_health))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", c.max_message_bytes),
                ("grpc.max_send_message_length", 4 << 20),
                ("grpc.so_reuseport", 0),
                ("grpc.max_concurrent_streams", c.max_concurrent_streams),
            ],
        )
        control_pb2_grpc.add_ControlServiceServicer_to_server(
            self._servicer_factory(self.dispatcher, Commands(c, self.membership), self.metrics),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            credentials = server_credentials(c.security)
            if credentials is None:
                port = server.add_insecure_port(c.listen)
            else:
                port = server.add_secure_port(c.listen, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise unavailable(f"cannot listen on {c.listen} (address in use or not local)")
        metrics_at = c.metrics_address()
        if metrics_at is not None:
            host, metrics_port = metrics_at
            try:
                self.metrics.serve(metrics_port, host)
            except OSError as err:  # before any engine is connected: nothing to undo
                raise unavailable(f"cannot serve metrics on {host}:{metrics_port}: {err}") from None
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._publish_health()
        self.membership.start(self._zmq)
        self._health_task = asyncio.create_task(self._health_loop())
        if c.engine_probe_interval_s is not None:
            self._probe_task = asyncio.create_task(self._probe_loop())
        self.sources.start()
        await server.start()
        self._server = server
        members = self.membership.members  # thousands in a fleet: one short line
        log.info("serving", listen=c.listen, port=port, engines=few_names(members),
                 engine_count=len(members), engines_file=str(c.engines_file or ""),
                 engines_dns=c.engines_dns)  # fmt: skip
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop. Health turns NOT_SERVING and new calls get UNAVAILABLE while the
        running ones have `grace` seconds to finish; what is still running then ends with
        UNAVAILABLE. gRPC itself is stopped last, so probes see NOT_SERVING during the drain."""
        if self._stopping or self._server is None or self.dispatcher is None:
            return
        self._stopping = True
        grace = self.config.shutdown_grace_s if grace is None else grace
        log.info("shutting down", grace_s=grace, running=len(self.dispatcher.running))
        await self.health.enter_graceful_shutdown()
        self.dispatcher.closing = True
        if not await self.dispatcher.wait_idle(grace):
            self.dispatcher.fail_all(shutting_down())
        await self._server.stop(_STATUS_FLUSH_S)
        self.sources.stop()
        for task in (self._health_task, self._probe_task):
            if task is not None:
                task.cancel()
        self.membership.close()
        self._zmq.term()
        await asyncio.to_thread(self.metrics.close)  # shutdown() waits out the serve loop's poll
        log.info("stopped", open_slots=self.budget.open)

    async def wait_for_termination(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    # -------------------------------------------------------------------------------- health

    def _on_link_change(self, link: EngineLink) -> None:
        if not link.up and self.dispatcher is not None:
            self.dispatcher.forget(link.name)
        self._on_membership_change()

    def _on_membership_change(self) -> None:
        self._health_dirty.set()
        self._links_changed.set()
        self._probe_now.set()

    async def _probe_loop(self) -> None:
        """Ask every engine whose link is up for its status: at once when a link changes, then
        every probe interval. The dispatcher learns capabilities and engine health from it."""
        while True:
            # 0: wait for a link change; the rounds space out as the fleet grows
            interval = self.config.probe_interval_s(len(self.links)) or None
            self._probe_now.clear()
            up = tuple(name for name, link in self.links.items() if link.up)
            if up and self.dispatcher is not None:
                await self.dispatcher.status(up)
            try:
                await asyncio.wait_for(self._probe_now.wait(), interval)
            except TimeoutError:
                pass

    async def wait_engines_up(self, timeout: float) -> bool:
        """Wait until every engine link is up; False if `timeout` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(link.up for link in self.links.values()):
            self._links_changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._links_changed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def _health_loop(self) -> None:
        """Health.set is a coroutine and links change in callbacks: one task publishes."""
        while True:
            await self._health_dirty.wait()
            self._health_dirty.clear()
            await self._publish_health()

    async def _publish_health(self) -> None:
        if self._stopping:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def ready(self) -> bool:
        """Enough engines up: every member (ready_min_engines 0) or at least that many; never
        with no engines at all. Leaving engines do not count."""
        down = self.dispatcher.engine_down if self.dispatcher is not None else {}
        members = self.membership.members
        links = self.links
        up = sum(1 for name in members if links[name].up and name not in down)
        need = self.config.ready_min_engines or len(members)
        return bool(members) and up >= need


def server_credentials(security: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS from the configured PEM files; with a client CA, clients must present a certificate."""
    if security.tls_cert is None or security.tls_key is None:
        return None
    client_ca = security.tls_client_ca.read_bytes() if security.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(security.tls_key.read_bytes(), security.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def serve(config: ServiceConfig, tracing: ServerTracing | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    server = ControlServer(config, tracing=tracing)
    await server.start()
    log_setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await stop.wait()
    await server.stop()
