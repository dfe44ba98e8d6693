"""The link to one engine: a ZMQ DEALER, its reply routing, and whether the engine is up.

Why a plain zmq socket driven by `loop.add_reader` rather than zmq.asyncio: the reply path is the
hot path, and this way a reply goes epoll -> decode -> slot -> caller's future with no task in
between. ZMQ's descriptor is edge-triggered, so we drain until EAGAIN on every wake-up and look
again after each send (a send can swallow the edge).

Liveness: `up` follows the socket monitor. HANDSHAKE_SUCCEEDED (not CONNECTED: a frozen process
still accepts TCP) means up; DISCONNECTED (heartbeat timeout, process gone) means down, and every
open slot fails with UNAVAILABLE at once instead of waiting for its deadline. With IMMEDIATE=1 a
send while down raises instead of queueing, so a call that failed is never delivered later.
An inproc:// engine has no handshake (the monitor reports nothing): it is up once connected.

Seams: `transmit` (one encoded request onto the socket), `receive` (one incoming message) and
`drain` (everything readable) are the steps of the reply path, public so that a subclass given
to `ControlServer(link_factory=...)` can observe or replace one (the benchmark times them; a test
delivers a reply inside `transmit`). `on_link_event` is the same for liveness.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog
import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

from control_service.errors import unavailable
from control_service.protocol import wire
from control_service.server.config import EngineConfig, LinkConfig
from control_service.server.slots import ReplySink, SlotBudget, SlotTable

log = structlog.get_logger("control_service.server.engine_link")

_HANDSHAKE = "handshake"
_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_MONITOR_STOPPED
)
# A hard transport cap far above the protocol's limit: ZMQ drops the *connection* on a larger
# message, so the protocol limit is enforced per frame in wire.decode_reply instead.
_TRANSPORT_MAX_BYTES = 64 << 20
# Plain ints: pyzmq's constants are enum flags, and flag arithmetic (`EVENTS & POLLIN`,
# `SNDMORE | NOBLOCK`) builds enum objects, a measurable share of a call's cost.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_COPY_BELOW = 65536  # bodies under this are copied (cheaper than tracking a zero-copy frame)


# `events(_EVENTS) & _POLLIN`: a message is waiting. Reading EVENTS also makes ZMQ process its
# pending commands, which its edge-triggered FD needs after a send, or a reply that came in
# meanwhile goes unseen.
Events = Callable[[int], int]


@dataclass(slots=True)
class LinkCounters:
    sent: int = 0
    send_failures: int = 0
    malformed: int = 0


class EngineLink:
    """One DEALER to one engine's ROUTER. Request and reply share the socket pair, so the engine
    answers the identity that asked and there is no registration message to race with."""

    def __init__(
        self,
        engine: EngineConfig,
        config: LinkConfig,
        budget: SlotBudget,
        on_change: Callable[[EngineLink], None] | None = None,
    ) -> None:
        self.name = engine.name
        self.endpoint = engine.endpoint
        self.config = config
        self.slots = SlotTable(budget)
        self.counters = LinkCounters()
        self.up = False
        self.down_reason = "not connected yet"
        self._on_change = on_change
        self._sock: zmq.Socket | None = None
        self._events: Events | None = None  # the socket's getsockopt, typed for EVENTS
        self._monitor: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, context: zmq.Context) -> None:
        """Connect (ZMQ reconnects by itself from then on). Call from the event loop's thread."""
        self._loop = asyncio.get_running_loop()
        sock = context.socket(zmq.DEALER)
        self._configure(sock)
        self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        sock.connect(self.endpoint)
        self._sock = sock
        self._events = cast(Events, sock.getsockopt)
        monitor = self._monitor
        self._loop.add_reader(sock.FD, self.drain)
        self._loop.add_reader(monitor.FD, self.read_link_events, monitor)
        self._loop.call_soon(self.read_link_events, monitor)
        if self.endpoint.startswith("inproc://"):
            self._set_up()

    def _configure(self, sock: zmq.Socket) -> None:
        c = self.config
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, c.send_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, _TRANSPORT_MAX_BYTES)
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(c.heartbeat_ivl_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(c.heartbeat_timeout_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(c.heartbeat_timeout_s * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL, int(c.reconnect_ivl_s * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(c.reconnect_ivl_max_s * 1000))
        if c.curve_server_key is not None and c.curve_client_key is not None:
            server_public, _ = zmq.auth.load_certificate(c.curve_server_key)
            public, secret = zmq.auth.load_certificate(c.curve_client_key)
            sock.curve_serverkey = server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret

    def close(self, reason: str = "service shutting down") -> None:
        """Fail what is still open, then close the sockets without lingering."""
        self._closed = True
        self._set_down(reason, expected=True)
        loop, sock, monitor = self._loop, self._sock, self._monitor
        self._sock = self._monitor = None
        self._events = None
        if loop is not None and sock is not None and monitor is not None:
            loop.remove_reader(sock.FD)
            loop.remove_reader(monitor.FD)
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    # ------------------------------------------------------------------------------ requests

    def open(self, request_id: str, sink: ReplySink) -> None:
        """Open the reply slot. Always before `send` for the same request_id."""
        self.slots.open(request_id, sink)

    def send(self, request: wire.Request) -> None:
        """Send without blocking; raises UNAVAILABLE (ControlError) if the engine cannot take it."""
        self.send_encoded(wire.encode_request(request))

    def send_encoded(self, body: bytes) -> None:
        """`send` for a request already encoded: a fan-out encodes once for all its engines."""
        if not self.up:
            self.counters.send_failures += 1
            raise unavailable(f"engine {self.name} is unreachable: {self.down_reason}")
        self.transmit(body)
        self.counters.sent += 1

    def transmit(self, body: bytes) -> None:
        """Put one encoded request on the socket, then look for a reply its send may have hidden.
        Raises UNAVAILABLE when the socket cannot take it (no peer, queue full)."""
        sock, events = self._sock, self._events
        assert sock is not None and events is not None and self._loop is not None
        try:
            # Two sends rather than send_multipart: same frames, a third of the cost (no
            # per-frame type checks, no flag arithmetic). With IMMEDIATE=1 only the first
            # frame can raise Again; once it is queued the message is sent whole.
            sock.send(b"", _MORE_NOBLOCK)
            sock.send(body, _NOBLOCK, copy=len(body) < _COPY_BELOW)
        except zmq.Again:
            self.counters.send_failures += 1
            raise unavailable(
                f"engine {self.name} is not accepting requests (no peer or queue full)"
            ) from None
        if events(_EVENTS) & _POLLIN:
            self._loop.call_soon(self.drain)

    # ------------------------------------------------------------------------------- replies

    @property
    def socket(self) -> zmq.Socket | None:
        """The DEALER while started, for diagnostics and tests (`poll` on it, say). A message sent
        on it directly bypasses the slots: use `open` and `send`."""
        return self._sock

    def drain(self) -> None:
        """Read every queued message (the event loop calls it when the socket is readable).
        Asking EVENTS first is cheaper than a raised zmq.Again.
        A bug handling one message costs that message only: leaving the loop early would leave
        the rest queued behind an edge-triggered FD that does not fire again for them."""
        sock, events = self._sock, self._events
        while sock is not None and events is not None and events(_EVENTS) & _POLLIN:
            frames = sock.recv_multipart(_NOBLOCK)
            try:
                self.receive(frames)
            except Exception:
                self.counters.malformed += 1
                log.exception("engine frame dropped: error handling it", engine=self.name)
            sock, events = self._sock, self._events

    def receive(self, frames: list[bytes]) -> None:
        """Route one incoming message. A bad one is dropped and counted; nothing else is harmed."""
        if len(frames) != 2 or frames[0]:
            self._malformed(f"expected [b'', body], got {len(frames)} frames", None)
            return
        try:
            reply = wire.decode_reply(frames[1], self.config.max_frame_bytes)
        except wire.WireError as err:
            self._malformed(err.reason, err.request_id)
            return
        if not self.slots.deliver(reply):
            log.info(
                "reply dropped: no open slot",
                engine=self.name,
                request_id=reply.request_id,
                kind=reply.kind,
            )

    def _malformed(self, reason: str, request_id: str | None) -> None:
        self.counters.malformed += 1
        log.warning("malformed engine frame dropped", engine=self.name, request_id=request_id,
                    reason=reason)  # fmt: skip

    # ------------------------------------------------------------------------------ liveness

    def read_link_events(self, monitor: zmq.Socket) -> None:
        """Handle every event queued on `monitor` (the link's socket monitor, from `start`). As
        in `drain`, an error handling one event (a lost engine ends its calls, which runs their
        code) must not leave the next one unread: a DISCONNECTED then a reconnect's
        HANDSHAKE_SUCCEEDED would leave the link down for good."""
        while not self._closed:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            try:
                self.on_link_event(event["event"])
            except Exception:
                log.exception("link event not fully handled", engine=self.name,
                              link_event=int(event["event"]))  # fmt: skip

    def on_link_event(self, event: int) -> None:
        """One socket monitor event (zmq.EVENT_*): up, down, or a failed handshake."""
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._set_up()
        elif event == zmq.EVENT_DISCONNECTED:
            # A failed handshake is followed by DISCONNECTED: keep the reason that explains it.
            if self.up or not self.down_reason.startswith(_HANDSHAKE):
                self._set_down("connection lost (engine exited or missed heartbeats)")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._handshake_failed(f"{_HANDSHAKE} refused: the engine does not accept our key")
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self._handshake_failed(f"{_HANDSHAKE} failed: wrong CURVE server key or security mode")

    def _handshake_failed(self, reason: str) -> None:
        """The link never comes up and no call fails with it, so say it once in the log: an
        operator with mismatched keys otherwise sees nothing but an unreachable engine."""
        if reason != self.down_reason:
            log.warning("engine handshake failed", engine=self.name, endpoint=self.endpoint,
                        reason=reason)  # fmt: skip
        self._set_down(reason)

    def _set_up(self) -> None:
        if not self.up:
            self.up = True
            self.down_reason = ""
            log.info("engine up", engine=self.name, endpoint=self.endpoint)
            self._changed()

    def _set_down(self, reason: str, expected: bool = False) -> None:
        was_up, self.up, self.down_reason = self.up, False, reason
        failed = self.slots.fail_all(unavailable(f"engine {self.name} is unreachable: {reason}"))
        if was_up or failed:
            report = log.info if expected and not failed else log.warning
            report("engine down", engine=self.name, reason=reason, failed_calls=failed)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
