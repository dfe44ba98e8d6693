"""The engine library's socket: one ZMQ ROUTER, read without blocking and written without blocking.

Apart from the protocol (server.py) because this is plumbing a newcomer can read on its own:
binding, CURVE with a ZAP allow-list, draining an edge-triggered FD, non-blocking sends and a
clean close. What a frame means is the subclass's business (`_on_frames`), and so is what must
stop before the socket closes (`_shutdown`).

The socket is a plain (not zmq.asyncio) one read by `loop.add_reader`, and replies go out with a
non-blocking send: no future and no task per message, so an engine whose handler answers at once
costs about what a bare echo costs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import zmq
import zmq.asyncio
import zmq.auth

from .config import EngineServerConfig

log = logging.getLogger("control_service.engine")

# Plain ints: flag arithmetic on pyzmq's enum constants builds enum objects on every send.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class EngineServerError(Exception):
    """The server cannot start (e.g. the endpoint cannot be bound)."""


class RouterServer:
    """A bound ROUTER that hands every message to `_on_frames` and sends replies without blocking.

    Subclasses implement `_on_frames` (one received message) and `_shutdown` (cancel what runs;
    it sets `_closing`, after which nothing more is read or sent).
    """

    def __init__(self, config: EngineServerConfig) -> None:
        self.config = config
        self._sock: zmq.Socket[bytes] | None = None
        self._endpoint = ""
        self._closing = False
        self._draining = False  # inside _drain, whose loop looks at EVENTS after each send

    @property
    def endpoint(self) -> str:
        """The bound endpoint (the real port when bound to port 0); "" before serve()."""
        return self._endpoint

    def _on_frames(self, frames: list[bytes]) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ lifecycle

    async def serve(
        self, stop: asyncio.Event | None = None, ready: Callable[[str], None] | None = None
    ) -> None:
        """Bind, call `ready(endpoint)`, serve until `stop` is set (or this is cancelled), then
        cancel what runs and close. Raises EngineServerError when the bind fails."""
        ctx = zmq.asyncio.Context()  # asyncio for the ZAP authenticator; the ROUTER is plain
        sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        auth = self._curve(ctx, sock)
        try:
            sock.bind(self.config.bind)
        except zmq.ZMQError as err:
            _close(auth, sock, ctx)
            raise EngineServerError(f"cannot bind {self.config.bind}: {err}") from None
        self._sock = sock
        self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("%s listening on %s", self.config.name, self._endpoint)
        loop = asyncio.get_running_loop()
        fd = sock.FD
        loop.add_reader(fd, self._drain)
        loop.call_soon(self._drain)  # anything that came in before the reader was added
        try:
            if ready is not None:
                ready(self._endpoint)
            await (stop.wait() if stop is not None else loop.create_future())
        finally:
            loop.remove_reader(fd)
            await self._shutdown()
            self._sock = None
            _close(auth, sock, ctx)
            log.info("%s stopped", self.config.name)

    def _curve(self, ctx: zmq.asyncio.Context, sock: zmq.Socket[bytes]) -> Any:
        """Encrypt the link, and let in only the allow-listed client keys (a ZAP handler)."""
        curve = self.config.curve
        if curve is None:
            return None
        from zmq.auth.asyncio import AsyncioAuthenticator

        try:
            public, secret = curve.keys()
        except ValueError as err:
            raise EngineServerError(str(err)) from None
        auth = AsyncioAuthenticator(ctx)
        auth.start()
        allowed = curve.allowed_clients
        auth.configure_curve(
            domain="*", location=str(allowed) if allowed else zmq.auth.CURVE_ALLOW_ANY
        )
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        return auth

    # ------------------------------------------------------------------------------ receiving

    def _drain(self) -> None:
        """Handle every queued message. ZMQ's FD is edge-triggered: read until EVENTS shows none
        (a send can swallow the edge too, so `send_frame` looks again after sending, unless it
        runs in here)."""
        sock = self._sock
        self._draining = True
        try:
            while sock is not None and not self._closing and _readable(sock):
                frames = sock.recv_multipart(_NOBLOCK)
                try:
                    self._on_frames(frames)
                except Exception:  # a bug must cost one frame, never the engine
                    log.exception("unexpected error handling a frame; dropped")
                sock = self._sock
        finally:
            self._draining = False

    # ------------------------------------------------------------------------------ sending

    def send_frame(self, identity: bytes, body: bytes) -> bool:
        """Non-blocking: a peer that is gone or not reading loses the reply, nobody else waits.
        False when the reply was not delivered to the socket."""
        sock = self._sock
        if sock is None or self._closing:
            return False
        sent = True
        try:
            sock.send(identity, _MORE_NOBLOCK)  # ROUTER_MANDATORY: raises if the peer is gone
            sock.send(b"", _MORE_NOBLOCK)
            sock.send(body, _NOBLOCK)
        except zmq.ZMQError as err:
            _log_send_failure(identity, err)
            sent = False
        # The send may have taken the edge of a request that came in. Inside _drain its loop
        # looks next anyway; asking here too would cost a second system call per reply.
        if not self._draining and _readable(sock):
            asyncio.get_running_loop().call_soon(self._drain)
        return sent


def _readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


def _log_send_failure(identity: bytes, err: zmq.ZMQError) -> None:
    if isinstance(err, zmq.Again):
        log.warning("peer %s is not reading (high-water mark): reply dropped", identity.hex())
    elif err.errno == zmq.EHOSTUNREACH:
        log.warning("peer %s is gone: reply dropped", identity.hex())
    else:
        log.error("sending to peer %s failed: %r", identity.hex(), err)


def _close(auth: Any, sock: zmq.Socket[bytes], ctx: zmq.asyncio.Context) -> None:
    if auth is not None:
        auth.stop()
    sock.close(linger=0)
    ctx.term()
