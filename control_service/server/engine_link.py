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

Recovery: libzmq reconnects by itself after a lost connection, but not after a protocol error
(a failed CURVE handshake, a malformed greeting, a message over MAXMSGSIZE): it ends that
connection for good. It announces each retry it will make (CONNECT_RETRIED) right after the
DISCONNECTED, so a DISCONNECTED without one means no retry is coming: the link then closes the
DEALER at once (its descriptors and context slots are freed while the link waits) and opens a
fresh one after the configured reconnect interval, doubling up to its maximum while the engine
stays bad. Every slot was already failed with UNAVAILABLE at the disconnect, and the old socket
is closed without lingering, so nothing is ever resent. When the fresh socket cannot be made
(thousands of flapping links can exhaust the open-files limit or the context's socket slots:
`Too many open files`), the link stays down with that reason, says so once per streak of
failures, and tries again on the same backoff; it never leaves an exception to the event loop.

Fairness: `drain` reads at most a batch of messages per wake-up, then lets the loop's other work
run (health checks, timers, writes) and looks again; libzmq's I/O thread keeps reading the
connection meanwhile (RCVHWM is large), so heartbeats are never held up by our own loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import grpc
import structlog
import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

from control_service.errors import ControlError, clip, unavailable
from control_service.protocol import wire
from control_service.server.config import EngineConfig, LinkConfig
from control_service.server.slots import ReplySink, SlotBudget, SlotTable
from control_service.server.throttle import Throttle

log = structlog.get_logger("control_service.server.engine_link")

_HANDSHAKE = "handshake"
_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_MONITOR_STOPPED
)
# How long after a DISCONNECTED libzmq gets to announce its retry. Both events come from the same
# I/O-thread step, microseconds apart; the margin only covers our loop being busy.
_RETRY_NOTICE_S = 0.05
_CANCEL_TIMEOUT_S = 5.0
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
# Messages read per wake-up before the loop's other callbacks get their turn.
_READ_BATCH = 256


# `events(_EVENTS) & _POLLIN`: a message is waiting. Reading EVENTS also makes ZMQ process its
# pending commands, which its edge-triggered FD needs after a send, or a reply that came in
# meanwhile goes unseen.
Events = Callable[[int], int]


@dataclass(slots=True)
class LinkCounters:
    sent: int = 0
    send_failures: int = 0
    malformed: int = 0
    disconnects: int = 0
    recreated: int = 0  # fresh sockets after a disconnect libzmq would not retry


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
        self.probes = SlotTable(SlotBudget(config.max_status_probes))  # status probes' slots
        self.counters = LinkCounters()
        self.up = False
        self.down_reason = "not connected yet"
        self._on_change = on_change
        self._sock: zmq.Socket | None = None
        self._events: Events | None = None  # the socket's getsockopt, typed for EVENTS
        self._monitor: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._log_throttle = Throttle()  # stray and malformed frames: one line a second
        self._context: zmq.Context | None = None
        self._retry_announced = False  # CONNECT_RETRIED seen since the last DISCONNECTED
        self._retry_check: asyncio.TimerHandle | None = None
        self._recreate_timer: asyncio.TimerHandle | None = None
        self._backoff_s = config.reconnect_ivl_s
        self._open_failures = 0  # fresh sockets that could not be made, in a row

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, context: zmq.Context) -> None:
        """Connect (ZMQ reconnects by itself from then on). Call from the event loop's thread."""
        self._loop = asyncio.get_running_loop()
        self._context = context
        self._try_open()

    def _try_open(self) -> None:
        """Open the socket; if this process cannot make one now, stay down and retry later."""
        try:
            self._open_socket()
        except (zmq.ZMQError, OSError) as err:
            self._open_failed(err)
            return
        if self._open_failures:
            log.info("engine link socket opened", engine=self.name,
                     after_failures=self._open_failures)  # fmt: skip
            self._open_failures = 0

    def _open_socket(self) -> None:
        """The DEALER, its monitor, connected and read by the loop; all or nothing."""
        assert self._loop is not None and self._context is not None
        sock = self._context.socket(zmq.DEALER)
        monitor: zmq.Socket | None = None
        try:
            self._configure(sock)
            monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sock.connect(self.endpoint)
        except BaseException:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            raise
        self._sock, self._monitor = sock, monitor
        self._events = cast(Events, sock.getsockopt)
        self._loop.add_reader(sock.FD, self.drain)
        self._loop.add_reader(monitor.FD, self.read_link_events, monitor)
        self._loop.call_soon(self.read_link_events, monitor)
        if self.endpoint.startswith("inproc://"):
            self._set_up()

    def _close_socket(self) -> None:
        loop, sock, monitor = self._loop, self._sock, self._monitor
        self._sock = self._monitor = None
        self._events = None
        if loop is not None and sock is not None and monitor is not None:
            loop.remove_reader(sock.FD)
            loop.remove_reader(monitor.FD)
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def _configure(self, sock: zmq.Socket) -> None:
        c = self.config
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, c.send_hwm)
        sock.setsockopt(zmq.RCVHWM, c.recv_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, _TRANSPORT_MAX_BYTES)
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(c.heartbeat_ivl_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(c.heartbeat_timeout_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(c.heartbeat_timeout_s * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL, int(c.reconnect_ivl_s * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(c.reconnect_ivl_max_s * 1000))
        if self.endpoint.startswith("tcp://["):  # an IPv6 address (from --engines-dns AAAA)
            sock.setsockopt(zmq.IPV6, 1)
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
        for timer in (self._retry_check, self._recreate_timer):
            if timer is not None:
                timer.cancel()
        self._retry_check = self._recreate_timer = None
        self._close_socket()

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
        """Read the queued messages (the event loop calls it when the socket is readable), at most
        a batch per call. Asking EVENTS first is cheaper than a raised zmq.Again.
        A bug handling one message costs that message only: leaving the loop early would leave
        the rest queued behind an edge-triggered FD that does not fire again for them."""
        sock, events = self._sock, self._events
        budget = _READ_BATCH
        while sock is not None and events is not None and events(_EVENTS) & _POLLIN:
            if not budget:
                # The rest after the loop's other work: the FD will not fire again for messages
                # already queued, so the link schedules its own next look.
                assert self._loop is not None
                self._loop.call_soon(self.drain)
                return
            budget -= 1
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
        table = self.probes if reply.request_id in self.probes else self.slots
        if not table.deliver(reply):
            held = self._log_throttle.allow("unmatched")
            if held is not None:
                log.info("reply dropped: no open slot", engine=self.name,
                         request_id=clip(reply.request_id), kind=reply.kind,
                         suppressed=held)  # fmt: skip

    def _malformed(self, reason: str, request_id: str | None) -> None:
        """Drop the frame. When it names a request with an open slot, that engine's part of the
        call fails now with INTERNAL (rather than waiting out its deadline for a reply that this
        engine has just shown it cannot give), and the engine is told to stop."""
        self.counters.malformed += 1
        reason = clip(reason, 256)
        held = self._log_throttle.allow("malformed")
        if held is not None:
            log.warning("malformed engine frame dropped", engine=self.name,
                        request_id=clip(request_id), reason=reason, suppressed=held)  # fmt: skip
        if request_id is None:
            return
        table = self.probes if request_id in self.probes else self.slots
        error = ControlError(
            grpc.StatusCode.INTERNAL,
            f"engine {self.name} sent a reply that breaks the protocol: {reason}",
        )
        if table.fail(request_id, error) and self.up:
            try:
                self.send(wire.Request(request_id, "cancel", {}, _CANCEL_TIMEOUT_S))
            except ControlError:
                pass  # the engine is gone: nothing left to cancel

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
            self._backoff_s = self.config.reconnect_ivl_s
            self._set_up()
        elif event == zmq.EVENT_CONNECT_RETRIED:
            self._retry_announced = True
        elif event == zmq.EVENT_DISCONNECTED:
            self.counters.disconnects += 1
            self._watch_for_retry()
            # A failed handshake is followed by DISCONNECTED: keep the reason that explains it.
            if self.up or not self.down_reason.startswith(_HANDSHAKE):
                self._set_down("connection lost (engine exited or missed heartbeats)")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._handshake_failed(f"{_HANDSHAKE} refused: the engine does not accept our key")
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self._handshake_failed(f"{_HANDSHAKE} failed: wrong CURVE server key or security mode")

    # ------------------------------------------------------------------------------ recovery

    def _watch_for_retry(self) -> None:
        """After a DISCONNECTED: if libzmq announces no retry, recreate the socket."""
        assert self._loop is not None
        self._retry_announced = False
        if self._retry_check is None:
            self._retry_check = self._loop.call_later(_RETRY_NOTICE_S, self._check_retry)

    def _check_retry(self) -> None:
        self._retry_check = None
        if self._monitor is not None:  # an announcement already queued counts, however busy
            self.read_link_events(self._monitor)
        if self._retry_announced or self._closed or self._recreate_timer is not None:
            return
        if not self.down_reason.startswith(_HANDSHAKE):
            self.down_reason = "the engine broke the transport protocol (e.g. a frame over the cap)"
        # Anything still open fails with UNAVAILABLE first: the old socket's requests are never
        # resent. It is closed now, so its descriptors are free while the link waits.
        self._set_down(self.down_reason)
        self._close_socket()
        delay = self._schedule_recreate()
        log.info("engine link ended without a retry: reconnecting on a fresh socket",
                 engine=self.name, reason=self.down_reason, in_s=delay)  # fmt: skip

    def _schedule_recreate(self) -> float:
        assert self._loop is not None
        delay = self._backoff_s
        self._backoff_s = min(delay * 2, self.config.reconnect_ivl_max_s)
        self._recreate_timer = self._loop.call_later(delay, self._recreate)
        return delay

    def _recreate(self) -> None:
        """A fresh DEALER (and monitor) in place of one libzmq has given up on."""
        self._recreate_timer = None
        if self._closed or self._sock is not None:
            return
        self.counters.recreated += 1
        self._try_open()

    def _open_failed(self, err: Exception) -> None:
        """No socket could be made (e.g. EMFILE): down, said once per streak, tried again."""
        self._open_failures += 1
        self._set_down(f"cannot open a socket to the engine: {err}")
        if self._open_failures == 1:
            log.warning("engine link cannot open a socket: retrying with backoff",
                        engine=self.name, error=str(err))  # fmt: skip
        if not self._closed and self._recreate_timer is None:
            self._schedule_recreate()

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
        error = unavailable(f"engine {self.name} is unreachable: {reason}")
        failed = self.slots.fail_all(error) + self.probes.fail_all(error)
        if was_up or failed:
            report = log.info if expected and not failed else log.warning
            report("engine down", engine=self.name, reason=reason, failed_calls=failed)
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
