"""Start `python -m engine_stub` as a real subprocess and talk to it, for tests needing an engine.

`StubProcess` owns the process and its stdout JSON lines (read by a thread into `events`, so the
pipe never fills and every wait is a bounded wait on a condition, never a sleep). `EngineClient`
is a raw ZMQ DEALER speaking the engine protocol through control_service.protocol.wire.

    with StubProcess() as stub:
        endpoint = stub.start("--requests", "2")
        with EngineClient(endpoint) as engine:
            replies = engine.call("pause", {"mode": "abort"})
        stub.knob(silent=True)
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import zmq

from bench.procs import REPO, Child
from control_service.protocol import wire
from control_service.protocol.tracing import TraceContext

START_TIMEOUT = 15.0

Event = dict[str, Any]


class StubError(AssertionError):
    """A bounded wait on the stub ran out, or the stub died first."""


class StubProcess:
    """One engine_stub process: start, knobs, stdout events, stop. Use as a context manager.
    Supervised by bench.procs.Child, the one implementation of a JSON-lines child process."""

    def __init__(self) -> None:
        self.child: Child | None = None
        self.endpoint = ""

    # ------------------------------------------------------------------------------ lifecycle

    def start(self, *args: str, timeout: float = START_TIMEOUT) -> str:
        """Start the stub (on tcp://127.0.0.1:0 unless args has --bind); return its endpoint."""
        if "--bind" not in args:
            args = (*args, "--bind", "tcp://127.0.0.1:0")
        self.child = child = _StubChild("engine_stub", *args, repo=REPO, new_session=False)
        ready = child.wait_line(lambda e: e.get("event") == "ready", timeout)
        self.endpoint = ready["endpoint"]
        return self.endpoint

    @property
    def running(self) -> Child:
        """The started child (an AssertionError before `start`)."""
        assert self.child is not None, "not started"
        return self.child

    @property
    def alive(self) -> bool:
        """Started and not exited."""
        return self.child is not None and self.child.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.running.pid

    @property
    def events(self) -> list[Event]:
        """Every stdout line so far, as JSON (a line that is not: {"event": "raw", ...})."""
        return self.running.lines

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait (bounded); return the exit code."""
        return self.signal_and_wait(signal.SIGTERM, timeout)

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL, for a crash-like death; return the exit code."""
        return self.signal_and_wait(signal.SIGKILL, timeout)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit on its own; return the exit code."""
        return self.running.wait(timeout)

    def signal_and_wait(self, sig: signal.Signals, timeout: float = 10.0) -> int:
        """Send `sig` (unless it has exited), then wait (bounded); return the exit code."""
        self.running.send_signal(sig)
        return self.wait(timeout)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` and return at once (SIGSTOP / SIGCONT to freeze and thaw the engine)."""
        self.running.send_signal(sig)

    def __enter__(self) -> StubProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child is not None:
            self.child.stop(5.0)

    # ------------------------------------------------------------------------------ knobs

    def knob(self, timeout: float = 5.0, **kv: Any) -> Event | int:
        """Send one knob line and wait for its ack (returns it). `exit=N` returns the exit code."""
        mark = self.mark()
        self.running.write(json.dumps(kv))
        if "exit" in kv:
            return self.wait(timeout)
        ack = self.wait_event(lambda e: e.get("event") == "knob", timeout, since=mark)
        if not ack.get("ok"):
            raise StubError(f"knob {kv} refused: {ack.get('error')}")
        return ack

    def close_stdin(self) -> None:
        stdin = self.running.proc.stdin
        assert stdin is not None
        stdin.close()

    # ------------------------------------------------------------------------------ events

    def mark(self) -> int:
        """The index the next stdout event will get: pass it as `since` to ignore older ones."""
        return self.running.mark()

    def wait_event(
        self, predicate: Callable[[Event], bool], timeout: float = 5.0, since: int = 0
    ) -> Event:
        """The first stdout event at index >= since that matches; StubError after timeout."""
        return self.running.wait_line(predicate, timeout, since)

    def requests(self, method: str | None = None, since: int = 0) -> list[Event]:
        """The `request` events seen so far (the stub prints one per non-status request)."""
        return [
            e
            for e in self.events[since:]
            if e.get("event") == "request" and method in (None, e.get("method"))
        ]


class _StubChild(Child):
    error = StubError


class EngineClient:
    """A raw DEALER on the engine protocol, as the service's engine link would use it."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self._ids = itertools.count(1)

    def send(
        self,
        method: str,
        args: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        timeout_s: float = 10.0,
        trace: TraceContext | None = None,
    ) -> str:
        """Send one request; return its request_id."""
        rid = request_id or f"{method}-{next(self._ids)}"
        body = wire.encode_request(wire.Request(rid, method, args or {}, timeout_s, trace))
        self.send_raw([b"", body])
        return rid

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv_raw(self, timeout: float = 5.0) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            raise StubError(f"no reply within {timeout}s")
        return self.sock.recv_multipart()

    def recv(self, timeout: float = 5.0) -> wire.Reply:
        frames = self.recv_raw(timeout)
        assert len(frames) == 2 and frames[0] == b"", f"bad reply envelope {frames!r}"
        return wire.decode_reply(frames[1])

    def nothing_within(self, seconds: float) -> bool:
        """True when no frame arrives within `seconds` (for asserting a reply never comes)."""
        return not self.sock.poll(int(seconds * 1000))

    def until_terminal(self, request_id: str, timeout: float = 10.0) -> list[wire.Reply]:
        """Replies for request_id up to and including its result/error (others are skipped)."""
        deadline = time.monotonic() + timeout
        out: list[wire.Reply] = []
        while True:
            reply = self.recv(max(0.0, deadline - time.monotonic()))
            if reply.request_id != request_id:
                continue
            out.append(reply)
            if reply.terminal:
                return out

    def call(
        self, method: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0, **kw: Any
    ) -> list[wire.Reply]:
        """Send and collect every reply up to the terminal one."""
        rid = self.send(method, args, **kw)
        return self.until_terminal(rid, timeout)

    def result(self, method: str, args: dict[str, Any] | None = None, **kw: Any) -> wire.Reply:
        """call() whose terminal reply must be a result."""
        reply = self.call(method, args, **kw)[-1]
        assert reply.kind == wire.RESULT, f"{method} ended with {reply}"
        return reply

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
